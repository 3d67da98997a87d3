"""Diagnostics: forward equivariance errors and gradient overlaps across group orbits.

- ``equivariance_errors(apply_fn, params, x, y, sigma, group, EquivarianceConfig())`` —
  ``E_g(x) = SMSE(f(g.x), g.f(x))``, orbit and test errors
  (:mod:`symgrad.diagnostics.equivariance`, docs/equivariance.md).
- ``compute_overlaps(apply_fn, params, x, y, sigma, group, OverlapConfig())`` — per-example
  gradients, chi solves, overlap matrices and their certified bounds
  (:mod:`symgrad.diagnostics.overlap`, docs/overlap.md); ``chi_solve`` for one block of
  right-hand sides.
- ``probe_spectrum`` — top eigenvalues, trace and effective dimension of the Gauss-Newton
  matrix ``G`` (``GaussNewtonBlocks``), which predict the cost of the solves.
- ``per_example_gradients`` — the flattened loss gradients, chunked.

Each diagnostic's settings are one frozen config (:mod:`symgrad.diagnostics.config`),
checked once. The parts of the overlap engine (``solvers``, ``certify``, ``store``,
``ggn``) are submodules with one job each.
"""

from typing import TYPE_CHECKING

from symgrad.diagnostics.config import EquivarianceConfig as EquivarianceConfig
from symgrad.diagnostics.config import OverlapConfig as OverlapConfig
from symgrad.diagnostics.config import SpectrumConfig as SpectrumConfig

# The rest imports jax, so it loads on first use: the command line builds its flags from the
# configs without it, and `symgrad --help` answers at once.
_LAZY = {
    "equivariance_errors": "equivariance", "GaussNewtonBlocks": "ggn", "per_example_gradients": "gradients",
    "chi_solve": "overlap", "compute_overlaps": "overlap", "probe_spectrum": "spectrum",
}

if TYPE_CHECKING:
    from symgrad.diagnostics.equivariance import equivariance_errors as equivariance_errors
    from symgrad.diagnostics.ggn import GaussNewtonBlocks as GaussNewtonBlocks
    from symgrad.diagnostics.gradients import per_example_gradients as per_example_gradients
    from symgrad.diagnostics.overlap import chi_solve as chi_solve
    from symgrad.diagnostics.overlap import compute_overlaps as compute_overlaps
    from symgrad.diagnostics.spectrum import probe_spectrum as probe_spectrum

__all__ = ["EquivarianceConfig", "GaussNewtonBlocks", "OverlapConfig", "SpectrumConfig", "chi_solve",
           "compute_overlaps", "equivariance_errors", "per_example_gradients", "probe_spectrum"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"symgrad.diagnostics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'symgrad.diagnostics' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
