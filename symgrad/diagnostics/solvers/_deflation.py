"""One deflation space shared by every chunk's chi solve: the top eigenvectors of G taken out
of the Krylov process, exactly, by the Schur complement.

Why: when the Lanczos basis cannot be stored (the study's own scale), reorthogonalisation is
local and the converged top Ritz vectors are found again and again (Paige): on the measured
spectra that multiplied the products by 3 to 6 (benchmarks/records/overlap_levers.json).
Taking the top eigenspace out of the process removes the directions that converge first.

The space is any k orthonormal rows ``Z`` (here Ritz vectors of G from one block Lanczos
run with its whole basis kept, ``ritz_space``); nothing below needs them to be accurate
eigenvectors, only the speed does. With ``AZ = A Z`` (k products, once), ``E = Z A Z^T`` and
``Pi`` the orthogonal projector onto ``Z-perp``, the solution of ``A x = b`` is
``x = Z^T E^-1 (Z b - AZ y) + y`` where ``y`` in ``Z-perp`` solves ``S y = c`` with

    S = Pi (A - AZ^T E^-1 AZ) Pi,        c = Pi (b - AZ^T E^-1 Z b).

``S`` on ``Z-perp`` is the Schur complement of A's ``Z`` block: symmetric, and its inverse is
the ``Z-perp`` block of ``A^-1``, so ``lambda_min(S) >= lambda_min(A) >= lambda`` (the
Gauss-Radau node stands) and, for the residual ``r = b - A x = c - S y`` (which lies in
``Z-perp``), ``r^T A^-1 r = r^T S^-1 r``: a bound on the S-solve's energy error is the same
bound for x. The quadratic forms split as ``b^T A^-1 b' = (Z b)^T E^-1 (Z b') + c^T S^-1 c'``.
``finish`` recomputes the explicit residual of x with A, so the rounding of this algebra is
in the drift term of every bound; the computed S's own rounding is estimated as the
operator's is (``certify.linearity_rounding``) and carries the quadrature.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.certify import linearity_rounding
from symgrad.diagnostics.solvers._base import device_block, host_rows, host_width
from symgrad.diagnostics.solvers._block import _inv_spd
from symgrad.diagnostics.solvers._lanczos import _combine, _gram, _project_out, rank_revealing_rows, run_lanczos


class Deflation:
    """The Schur complement of ``operator`` (``A``) off the span of the orthonormal rows ``z``
    (module docstring). Counts its products on ``operator``."""

    def __init__(self, operator, z):
        self.base = operator
        self.z = z
        self.k = int(z.shape[0])
        self.az = operator(z)
        self.e_inv = _inv_spd(np.asarray(_gram(z, self.az), np.float64))
        self._rounding = None

    # the ChiOperator interface the Lanczos process and the Radau recurrence need
    @property
    def damping(self):
        return self.base.damping

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def n_params(self):
        return self.base.n_params

    @property
    def products(self):
        return self.base.products

    def project(self, w):
        """``Pi w``, twice (the rows of z are orthonormal to rounding)."""
        return _project_out(_project_out(w, self.z), self.z)

    def _coarse(self, coef):
        return jnp.asarray(coef @ self.e_inv, self.dtype)

    def __call__(self, w):
        """``S w`` for rows ``w`` in ``Z-perp``."""
        aw = self.base(w)
        return self.project(aw - _combine(self._coarse(np.asarray(_gram(w, self.az), np.float64)), self.az))

    def prepare(self, b):
        """``(c, G_Z)``: the S-problem's right-hand sides and the coarse part of every form,
        ``(Z b)^T E^-1 (Z b')``."""
        zb = np.asarray(_gram(b, self.z), np.float64)
        c = self.project(b - _combine(self._coarse(zb), self.az))
        return c, zb @ self.e_inv @ zb.T

    def coarse(self, b, y):
        """``E^-1 (Z b - AZ y)``: the Z coordinates of x (``(m, k)``)."""
        return np.asarray(_gram(b, self.z), np.float64) @ self.e_inv - np.asarray(_gram(y, self.az), np.float64) @ self.e_inv

    def recover(self, b, y):
        """``x = Z^T E^-1 (Z b - AZ y) + y``."""
        return y + _combine(jnp.asarray(self.coarse(b, y), self.dtype), self.z)

    def rounding(self) -> float:
        """An a-posteriori estimate of the rounding of the computed S (``linearity_rounding`` on
        ``S Pi``) plus the operator's: it carries the quadrature run on S."""
        if self._rounding is None:
            def apply(block):  # host rows in and out, moved as every block of the operator is
                return host_rows(self.base, self(self.project(device_block(self.base, block))))

            estimate, _ = linearity_rounding(apply, host_width(self.base), self.dtype)
            self._rounding = float(estimate) + float(self.base.rounding())
        return self._rounding


def ritz_space(undamped, k: int, *, block: int, steps: int, seed: int = 0):
    """The top ``k`` Ritz vectors of G (``undamped``: the operator at damping 0) from ``steps``
    block Lanczos steps of ``block`` Rademacher vectors, the whole basis kept; ``(k', P)``
    orthonormal rows (k' <= k after deflation of dependent directions) and the Ritz values."""
    import jax

    z0 = jax.random.rademacher(jax.random.PRNGKey(seed), (block, undamped.n_params), dtype=undamped.dtype)
    dim = block * (steps + 1)
    lanczos, omegas, betas = run_lanczos(undamped, z0, steps=steps,
                                         basis_bytes=dim * undamped.n_params * np.dtype(undamped.dtype).itemsize)
    from symgrad.diagnostics.spectrum import block_tridiagonal

    t = block_tridiagonal(omegas, betas)
    theta, y = np.linalg.eigh(t)
    top = np.argsort(theta)[::-1][:k]
    coef = y[:, top].T  # (k, dim): Ritz vector i = sum over the basis
    pages, at, z = lanczos.pages, 0, None
    for page in pages:  # the basis, in order; the last Lanczos block is not in T
        rows = int(page.shape[0])
        if at + rows > t.shape[0]:
            rows = t.shape[0] - at
            page = page[:rows]
        if rows <= 0:
            break
        part = _combine(jnp.asarray(coef[:, at:at + rows], undamped.dtype), page)
        z = part if z is None else z + part
        del part
        at += rows
    lanczos = pages = page = None  # the basis is freed before z is orthonormalised (plan.ritz_phase_vectors)
    z, _, _ = rank_revealing_rows(z, 1e-8)
    return z, theta[top]
