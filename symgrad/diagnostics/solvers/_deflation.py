"""One deflation space shared by every chunk's chi solve: the top eigenvectors of G taken out
of the Krylov process, exactly, by the Schur complement.

Why: when the Lanczos basis cannot be stored (the study's own scale), reorthogonalisation is
local and the converged top Ritz vectors are found again and again (Paige): on the measured
spectra that multiplied the products by 3 to 6 (benchmarks/records/overlap_levers.json).
Taking the top eigenspace out of the process removes the directions that converge first.

The space is any k orthonormal rows ``Z``; nothing below needs them to be accurate
eigenvectors, only the speed does. Here they are recycled (``Recycle``, ``recycled_space``):
the first chunk's solve keeps its Lanczos vectors and their products, and the Ritz vectors
of that space, with ``AZ`` combined from the same products, deflate every later chunk. No
product is spent on the space. With ``AZ = A Z``, ``E = Z A Z^T`` and
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
from symgrad.diagnostics.solvers._lanczos import (
    _combine, _gram, _project_out, _qr_rows,
)


class Deflation:
    """The Schur complement of ``operator`` (``A``) off the span of the orthonormal rows ``z``
    (module docstring). Counts its products on ``operator``."""

    def __init__(self, operator, z, az=None):
        self.base = operator
        self.z = z
        self.k = int(z.shape[0])
        self.az = operator(z) if az is None else az
        e = np.asarray(_gram(z, self.az), np.float64)
        # E^-1 through its diagonal scaling D E D (near I for Ritz vectors, whatever their spread)
        d = 1.0 / np.sqrt(np.abs(np.diagonal(e)))
        scaled = d[:, None] * e * d[None, :]
        self.e_inv = d[:, None] * _inv_spd(scaled) * d[None, :]
        eig = np.linalg.eigvalsh(0.5 * (scaled + scaled.T))
        self.e_cond = float(eig.max() / max(eig.min(), np.finfo(np.float64).tiny))  # of D E D
        # ||Pi AZ D||^2 (Ritz residuals over sqrt(Ritz values)): what couples Z-perp to E^-1
        coupling = np.asarray(_gram(self.az, self.az), np.float64) - e.T @ e
        coupling = d[:, None] * coupling * d[None, :]
        self.coupling = float(max(np.linalg.eigvalsh(0.5 * (coupling + coupling.T)).max(), 0.0))
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
            # Two symmetric perturbations no linearity test sees. The rounding dAZ of AZ is, but for
            # a skew part that Z-perp annihilates (and E's symmetrisation drops), F Z for a
            # symmetric F of norm <= 2 ||dAZ||: S is the Schur complement of A + F, to F itself.
            # E^-1 = D (D E D)^-1 D, the middle inverse computed with an error of at most about
            # k eps cond(D E D), which S sees through Pi AZ D: k eps cond(D E D) ||Pi AZ D||^2.
            op = float(self.base.rounding())
            inverse = self.k * np.finfo(np.float64).eps * self.e_cond * self.coupling
            self._rounding = float(estimate) + 3.0 * op + inverse
        return self._rounding


# Ritz vectors of the recycled space are kept above RITZ_FLOOR times lambda: a direction whose
# curvature is near lambda takes nothing hard out of the later solves, and E's smallest
# eigenvalue stays away from lambda. Measured on the tiny proxy's replica at lambda 1e-4
# (benchmarks/records/overlap_levers.json): floors of 1, 2, 10 and 100 lambda took 1,684,
# 1,700, 1,692 and 1,756 products.
RITZ_FLOOR = 10.0
ORTHONORMAL_TOL = 1e-12


class Recycle:
    """What a block solve keeps for the solves after it (``BlockLanczos.solve(recycle=)``):
    its first ``vectors`` Lanczos vectors and their products, as computed."""

    def __init__(self, vectors: int):
        self.vectors = int(vectors)
        self.pages, self.product_pages = [], []

    def collect(self, lanczos) -> None:
        """The stored pages that have kept products (a page cut to its product's rows)."""
        products = list(lanczos.product_pages)
        self.pages = [page[:int(product.shape[0])] for page, product in zip(lanczos.pages, products)]
        self.product_pages = products

    def space(self, operator):
        """``(Deflation, Ritz values)`` from the collected pages (``recycled_space``), or
        ``(None, [])`` when no Ritz value clears the floor. Frees the pages."""
        pages, products = self.pages, self.product_pages
        self.pages = self.product_pages = None
        z, az, theta = recycled_space(pages, products, float(operator.damping))
        return (Deflation(operator, z, az) if z is not None else None), theta


def recycled_space(pages, product_pages, damping: float):
    """The Ritz vectors of ``A`` in the span of a solve's stored Lanczos pages, with their
    products taken from the products that solve computed: ``(z, az, theta)``, no new product
    (``(None, None, [])`` when none clears the floor). Kept: Ritz values above ``RITZ_FLOOR``
    lambda.

    The Rayleigh quotient is formed from the pages and their products themselves, not from
    ``T``: it is the computed operator's wherever the pages are orthonormal. The pages are
    consumed (at most three sets of rows are held at once, and a padded copy or a QR's
    workspace: ``plan.RECYCLE_PHASE``)."""
    if not product_pages:  # the solve ended before a product (an invariant start block)
        return None, None, np.zeros(0)
    v = jnp.concatenate(pages) if len(pages) > 1 else pages[0]
    del pages[:]
    av = jnp.concatenate(product_pages) if len(product_pages) > 1 else product_pages[0]
    del product_pages[:]
    h = np.asarray(_gram(v, av), np.float64)
    theta, y = np.linalg.eigh(0.5 * (h + h.T))
    floor = RITZ_FLOOR * damping
    top = [i for i in np.argsort(theta)[::-1] if theta[i] > floor]
    if not top:
        return None, None, theta[:0]
    coef = jnp.asarray(y[:, top].T, v.dtype)
    z = _combine(coef, v)
    del v
    az = _combine(coef, av)
    del av
    # the rows of z are orthonormal as far as the pages were (reorthogonalised against each
    # other twice); should they not be to ORTHONORMAL_TOL, once more through QR, az alike
    gram = np.asarray(_gram(z, z), np.float64)
    if np.max(np.abs(gram - np.eye(len(top)))) <= ORTHONORMAL_TOL:
        return z, az, theta[top]
    q, r = _qr_rows(z)
    del z
    r_inv = np.linalg.inv(np.asarray(r, np.float64))
    return q, _combine(jnp.asarray(r_inv.T, q.dtype), az), theta[top]
