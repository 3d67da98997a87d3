"""Diagnostics: forward equivariance errors and gradient overlaps across group orbits.

- ``equivariance_errors`` — ``E_g(x) = SMSE(f(g.x), g.f(x))``, orbit and test errors
  (:mod:`symgrad.diagnostics.equivariance`, docs/equivariance.md).
- ``compute_overlaps`` — per-example gradients, chi solves, overlap matrices and their
  certified bounds (:mod:`symgrad.diagnostics.overlap`, docs/overlap.md); ``chi_solve`` for
  one block of right-hand sides.
- ``probe_spectrum`` — top eigenvalues, trace and effective dimension of the Gauss-Newton
  matrix ``G`` (``GaussNewtonBlocks``), which predict the cost of the solves.
- ``per_example_gradients`` — the flattened loss gradients, chunked.

The parts of the overlap engine (``solvers``, ``certify``, ``store``, ``ggn``) are
submodules with one job each.
"""

from symgrad.diagnostics.equivariance import equivariance_errors as equivariance_errors
from symgrad.diagnostics.ggn import GaussNewtonBlocks as GaussNewtonBlocks
from symgrad.diagnostics.gradients import per_example_gradients as per_example_gradients
from symgrad.diagnostics.overlap import chi_solve as chi_solve, compute_overlaps as compute_overlaps
from symgrad.diagnostics.spectrum import probe_spectrum as probe_spectrum

__all__ = ["GaussNewtonBlocks", "chi_solve", "compute_overlaps", "equivariance_errors", "per_example_gradients",
           "probe_spectrum"]
