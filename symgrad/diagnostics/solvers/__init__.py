"""chi solvers behind one protocol: ``(lambda I + G) X = B`` for blocks of right-hand sides.

- ``block`` (default): block Lanczos over every right-hand side at once, block Gauss /
  Gauss-Radau bounds, stopping on the certified quantities (``_block``).
- ``cg``: independent CG per right-hand side with the residual rule (the baseline, ``_cg``).
- ``dense``: Cholesky of the formed matrix, the exact reference for small models (``_dense``).

Every solver takes one ``SolverSettings`` and returns one ``ChiSolution``; the bounds and
flags come from ``symgrad.diagnostics.certify``.
"""

from symgrad.diagnostics.solvers._base import (
    ChiSolution as ChiSolution,
    ChiSolver as ChiSolver,
    SolverSettings as SolverSettings,
    StoppingRule as StoppingRule,
    corrected_cross as corrected_cross,
    corrected_gram as corrected_gram,
    device_memory_bytes as device_memory_bytes,
    euclidean_gram as euclidean_gram,
)
from symgrad import names
from symgrad.diagnostics.solvers._block import BlockLanczosSolver as BlockLanczosSolver
from symgrad.diagnostics.solvers._cg import CGSolver as CGSolver
from symgrad.diagnostics.solvers._dense import DenseSolver as DenseSolver

SOLVERS = {cls.name: cls for cls in (BlockLanczosSolver, CGSolver, DenseSolver)}
assert tuple(SOLVERS) == names.SOLVERS and names.DEFAULT_SOLVER in SOLVERS, "symgrad.names lists the solvers"
DEFAULT_SOLVER = names.DEFAULT_SOLVER


def make_solver(name: str, settings: SolverSettings) -> ChiSolver:
    """The solver called ``name`` with ``settings``; never substitutes another one."""
    from symgrad.errors import SymgradError

    if name not in SOLVERS:
        raise SymgradError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name](settings)
