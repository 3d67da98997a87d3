"""Diagnostics: forward equivariance errors and gradient overlaps across group orbits.

- :mod:`symgrad.diagnostics.equivariance` — ``E_g(x) = SMSE(f(g.x), g.f(x))`` and orbit errors.
- :mod:`symgrad.diagnostics.gradients` — per-example loss gradients, chunked.
- :mod:`symgrad.diagnostics.ggn` — the Gauss-Newton operator as a lineax operator.
- :mod:`symgrad.diagnostics.overlap` — chi-solves, overlap matrices and their error bounds.

Submodules are imported lazily (``symgrad.diagnostics.overlap`` etc.) so that importing the
package does not pull in lineax or xarray.
"""
