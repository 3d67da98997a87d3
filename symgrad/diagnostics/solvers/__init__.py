"""chi solvers behind one protocol: ``(lambda I + G) X = B`` for blocks of right-hand sides.

- ``BlockLanczos`` (``block``, the default): block Lanczos over every right-hand side at
  once, block Gauss / Gauss-Radau bounds, stopping on the certified quantities (``_block``).
- ``CG`` (``cg``): independent CG per right-hand side with the residual rule (the baseline, ``_cg``).
- ``Dense`` (``dense``): Cholesky of the formed matrix, the exact reference for small models (``_dense``).

A solver is a frozen dataclass of its own knobs; ``solve(operator, rhs, targets)`` takes a
``ChiOperator`` (which owns the damping and counts its products) and a ``certify.Targets``
(rtol and which columns are which), and returns one ``ChiSolution`` whose ``result`` means
the same for every solver. The bounds and flags come from ``symgrad.diagnostics.certify``.
A new solver goes in its own module here and in ``SOLVERS`` (and its name in ``symgrad.names``).
"""

from symgrad import names
from symgrad.diagnostics.certify import Targets as Targets
from symgrad.diagnostics.solvers._base import (
    ChiOperator as ChiOperator,
    ChiSolution as ChiSolution,
    ChiSolver as ChiSolver,
    Result as Result,
    corrected_cross as corrected_cross,
    corrected_gram as corrected_gram,
    device_memory_bytes as device_memory_bytes,
    euclidean_gram as euclidean_gram,
)
from symgrad.diagnostics.solvers._block import BlockLanczos as BlockLanczos
from symgrad.diagnostics.solvers._cg import CG as CG
from symgrad.diagnostics.solvers._dense import Dense as Dense

SOLVERS = {cls.name: cls for cls in (BlockLanczos, CG, Dense)}
assert tuple(SOLVERS) == names.SOLVERS and names.DEFAULT_SOLVER in SOLVERS, "symgrad.names lists the solvers"
