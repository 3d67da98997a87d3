"""Block Lanczos on a symmetric operator: deflation of dependent directions and
reorthogonalisation against a stored prefix of the basis, within a memory budget.

Blocks are rows: ``V_j`` is ``(s_j, n)``. In column form the recurrence is
``A V_j = V_{j-1} B_j^T + V_j Omega_j + V_{j+1} B_{j+1}`` with ``V = [V_1 V_2 ...]``
orthonormal and ``T = tridiag(B_j, Omega_j, B_j^T)`` the block tridiagonal projection of A.

Why a stored prefix: in floating point, plain Lanczos loses orthogonality along converged
Ritz vectors and re-finds them (Paige), which multiplied the steps of a chi solve by 5 on
the measured Gauss-Newton spectra (docs/overlap.md section 4). The top Ritz vectors
converge first, inside the span of the first blocks, so keeping those blocks and
projecting every new block against them recovers most of the exact-arithmetic
convergence at a bounded memory cost (``basis_bytes``). Two passes of classical block
Gram-Schmidt ("twice is enough") against the prefix and the two latest blocks.

A direction whose coupling falls below ``rank_tol`` times the operator norm is deflated
(dropped from the next block), at the rounding level of a product: an exactly invariant
subspace ends the recurrence there. The start block is deflated at ``START_RANK_TOL``
relative to its largest row, so that gradients equal to round-off (an equivariant model)
are solved once; what that drops is left in the explicit residual and so in the bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics._rows import bucket, pad_to_bucket, settle


START_RANK_TOL = 1e-10


# The kernels take blocks of rows whose count changes from step to step; their inputs are
# padded with zero rows to a few sizes (symgrad.diagnostics._rows), so each compiles a few
# times per solve instead of once per step, and the padding is cut off the result.


@jax.jit
def _project_out_kernel(w, q):
    return w - (w @ q.T) @ q


@jax.jit
def _gram_kernel(a, b):
    return a @ b.T


@jax.jit
def _qr_kernel(w):
    q, r = jnp.linalg.qr(w.T)
    return q.T, r


@jax.jit
def _combine_kernel(coef, rows):
    return coef @ rows


def _project_out(w, q):
    """``w`` without its components along the orthonormal rows ``q``."""
    return settle(_project_out_kernel(pad_to_bucket(w), pad_to_bucket(q))[:w.shape[0]])


def _gram(a, b):
    return settle(_gram_kernel(pad_to_bucket(a), pad_to_bucket(b))[:a.shape[0], :b.shape[0]])


def _qr_rows(w):
    """``w = R^T Q`` with orthonormal rows ``Q``; zero rows of padding after the data rows do
    not change the first rows of Q nor the leading block of R (Householder QR works column
    by column of ``w^T``)."""
    s = int(w.shape[0])
    q, r = _qr_kernel(pad_to_bucket(w))
    return settle(q[:s]), r[:s, :s]


def _combine(coef, rows):
    """``coef @ rows`` for a ``(m, s)`` coefficient matrix and ``(s, n)`` rows."""
    coef = jnp.asarray(coef, rows.dtype)
    m, s = int(coef.shape[0]), int(rows.shape[0])
    padded = jnp.pad(coef, ((0, bucket(m) - m), (0, bucket(s) - s))) if (m, s) != (bucket(m), bucket(s)) else coef
    return settle(_combine_kernel(padded, pad_to_bucket(rows))[:m])


def rank_revealing_rows(w, tol_abs: float):
    """``w = B^T V`` with orthonormal rows ``V`` and ``B`` of full row rank ``s'`` (directions
    of singular value <= ``tol_abs`` dropped). Returns ``(V, B, singular values)``."""
    q, r = _qr_rows(w)
    u, s, vt = np.linalg.svd(np.asarray(r, np.float64))
    keep = s > tol_abs
    v = _combine(jnp.asarray(u[:, keep].T, q.dtype), q)
    beta = s[keep, None] * vt[keep]
    return v, beta, s


class BlockLanczosProcess:
    """The block Lanczos process on ``matvec`` (``(s, n) -> (s, n)``), started from ``start``.

    After construction ``V`` is the first block and ``rho0`` (``s_1 x k``) satisfies
    ``start = rho0^T V``. Each ``step()`` returns ``(Omega_j, B_{j+1})`` and advances:
    ``V_prev`` becomes the block just processed, ``V`` the next one.
    """

    def __init__(self, matvec, start, *, basis_bytes: int, rank_tol: float, keep_products: int = 0):
        self.matvec = matvec
        self.keep_products = int(keep_products)
        self.product_pages: list[jax.Array] = []  # matvec of the first keep_products stored vectors, as computed
        self.rank_tol = float(rank_tol)
        start = jnp.asarray(start)
        self.dtype = start.dtype
        self.n = int(start.shape[1])
        start_scale = float(jnp.max(jnp.linalg.norm(start, axis=1)))  # on the device: no host copy of the block
        self.V, rho0, _ = rank_revealing_rows(start, START_RANK_TOL * start_scale)
        self.rho0 = rho0
        self.V_prev = None
        self.beta = None  # B_j, (s_j, s_{j-1})
        self.norm_estimate = 0.0
        self.pages: list[jax.Array] = []
        self.stored = 0
        self.capacity = max(0, int(basis_bytes) // (self.n * np.dtype(self.dtype).itemsize))
        self.steps = 0
        self.dimension = int(self.V.shape[0])  # sum of block sizes so far (the Krylov dimension)
        self._store(self.V)

    @property
    def block_size(self) -> int:
        return int(self.V.shape[0])

    def _store(self, block):
        """Keep ``block`` for reorthogonalisation while the budget lasts; the last block that
        does not fit whole is kept in part (its first rows: still orthonormal)."""
        room = min(int(block.shape[0]), self.capacity - self.stored)
        if room > 0:
            self.pages.append(block if room == block.shape[0] else block[:room])
            self.stored += room

    def _reorthogonalize(self, w):
        local = [b for b in (self.V_prev, self.V) if b is not None]
        stored_ids = {id(p) for p in self.pages}
        blocks = self.pages + [b for b in local if id(b) not in stored_ids]
        for _ in range(2):
            for q in blocks:
                w = _project_out(w, q)
        return w

    def step(self):
        if self.block_size == 0:
            raise RuntimeError("the Lanczos process has ended (invariant subspace)")
        w = self.matvec(self.V)
        kept = sum(int(page.shape[0]) for page in self.product_pages)
        if kept < self.keep_products and len(self.product_pages) < len(self.pages):
            rows = min(int(self.pages[len(self.product_pages)].shape[0]), self.keep_products - kept)
            self.product_pages.append(w[:rows])  # V is the latest stored page
        if self.V_prev is not None and self.beta.size:
            w = w - _combine(jnp.asarray(self.beta, self.dtype), self.V_prev)
        omega = np.asarray(_gram(self.V, w), np.float64)
        omega = 0.5 * (omega + omega.T)
        w = w - _combine(jnp.asarray(omega, self.dtype), self.V)
        w = self._reorthogonalize(w)
        self.norm_estimate = max(self.norm_estimate, float(np.max(np.abs(np.linalg.eigvalsh(omega)))))
        v_next, beta_next, _ = rank_revealing_rows(w, self.rank_tol * max(self.norm_estimate, _largest_row(w)))
        self.V_prev, self.V, self.beta = self.V, v_next, beta_next
        self._store(v_next)
        self.steps += 1
        self.dimension += int(v_next.shape[0])
        return omega, beta_next


def run_lanczos(matvec, start, *, steps: int, basis_bytes: int, rank_tol: float = 1e-12):
    """``steps`` block steps from ``start`` (fewer at an invariant subspace): the process and
    the blocks ``Omega_j``, ``B_{j+1}`` of its ``T`` (``spectrum.block_tridiagonal``)."""
    lanczos = BlockLanczosProcess(matvec, start, basis_bytes=basis_bytes, rank_tol=rank_tol)
    omegas, betas = [], []
    for _ in range(steps):
        if lanczos.block_size == 0:
            break
        omega, beta = lanczos.step()
        omegas.append(omega)
        betas.append(beta)
    return lanczos, omegas, betas


def _largest_row(w) -> float:
    return float(jnp.max(jnp.linalg.norm(w, axis=1))) if w.shape[0] else 0.0
