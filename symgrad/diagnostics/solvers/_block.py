"""The fast chi solver: one block Krylov space for every right-hand side, with block Gauss
and Gauss-Radau quadrature bounds, stopping on the certified quantities.

Block Lanczos on ``A = lambda I + G`` from all right-hand sides at once (normalised rows;
``_lanczos.BlockLanczos``). From ``T`` we keep, by block LDL^T recurrences of s x s
matrices (the block D-Lanczos form of block CG):

* the iterate ``X_k = V T_k^-1 E_1 rho_0`` (Galerkin), updated with search blocks
  ``P_j = V_j - P_{j-1} D_{j-1}^-1 B_j^T`` (``D_j`` the pivots of ``T_k``);
* the block Gauss estimate of every pair's ``b_i^T A^-1 b_j``:
  ``S_k = rho_0^T (T_k^-1)_{11} rho_0 = sum_j Psi_j^T D_j^-1 Psi_j``;
* the block Gauss-Radau bound on the error matrix, for any ``mu <= lambda_min(A)``:
  ``0 <= B^T A^-1 B - S_k <= C_k^T M_k^-1 C_k`` (Loewner order), where
  ``C_k = B_{k+1} D_k^-1 Psi_k`` (the recursive residual is ``R_k = -V_{k+1} C_k``) and
  ``M_k = mu I + B_{k+1} ((D_k^mu)^-1 - D_k^-1) B_{k+1}^T`` with ``D^mu`` the pivots of
  ``T_k - mu I``. Its diagonal bounds every right-hand side's energy error.

``mu = certify.radau_shift(lambda, delta)``: ``lambda_min(A) >= lambda`` exactly (G is
PSD), the computed operator's at least ``lambda - delta`` (``delta`` its estimated
rounding), and the margin keeps ``T - mu I`` well conditioned when Ritz values converge to
lambda (the null space of G is an eigenspace of A at lambda). The proof is in
docs/overlap.md section 3. A pivot ``D^mu`` or an ``M_k`` that is not positive definite,
or a negative form, means the quadrature broke down: the solve ends there and its values
are bounded by their residuals alone.

The loop stops when the stopping rule, given ``S_k`` and these bounds (never below the
floor that the operator's rounding puts under them), says every value is certified with
margin; then the explicit residuals are computed and, should the final certificate fail
(rounding, deflation), the same process continues with a tighter margin. A bound that has
not improved for ``STALL_STEPS`` steps (and half of the steps so far) ends the solve:
the target is out of reach, and the values are flagged, not iterated on to the step limit.
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.certify import (
    DEFAULT_SAFETY, MU_FRACTION, Targets, quadrature_carry, radau_shift,
)
from symgrad.diagnostics.solvers._base import ChiSolution, Result, device_memory_bytes, finish, form_gamma
from symgrad.diagnostics.solvers._lanczos import BlockLanczosProcess, _combine
from symgrad.names import DEFAULT_MAX_ITERATIONS

# After a failed final certificate the loop goes on until the margin is this much tighter,
# at most MAX_EXTENSIONS times.
EXTENSION_FACTOR = 0.1
MAX_EXTENSIONS = 3
# The solve stagnates when its largest relative energy error bound has not fallen below
# STALL_FACTOR times its best for STALL_STEPS steps and for half of the steps so far.
STALL_STEPS = 100
STALL_FACTOR = 0.9


def _inv_spd(a: np.ndarray) -> np.ndarray:
    a = 0.5 * (a + a.T)
    inv = np.linalg.inv(a)
    return 0.5 * (inv + inv.T)


def default_basis_bytes() -> int:
    """A quarter of the accelerator's memory, or of the host's when computing on the CPU."""
    return device_memory_bytes() // 4


@dataclasses.dataclass(frozen=True)
class BlockLanczos:
    """``--solver block``, the default (see the module docstring).

    ``max_steps``: block Lanczos steps at most. ``basis_bytes``: bytes of Lanczos vectors
    kept for reorthogonalisation (None: a quarter of the device or host memory).
    ``safety``: the stopping margin (``certify.DEFAULT_SAFETY``). ``rank_tol``: directions
    of a block below this fraction of the operator norm are deflated.
    """

    max_steps: int = DEFAULT_MAX_ITERATIONS
    basis_bytes: int | None = None
    safety: float = DEFAULT_SAFETY
    rank_tol: float = 1e-12
    name = "block"

    def solve(self, operator, rhs, targets: Targets, *, progress=None, deflation=None, recycle=None) -> ChiSolution:
        """``deflation``: a ``_deflation.Deflation`` of ``operator`` shared by every chunk (the
        process then runs on its Schur complement S; the bounds are the same, docs/overlap.md
        section 3.9), or None. ``recycle``: a ``_deflation.Recycle`` that keeps this solve's
        first ``recycle.vectors`` Lanczos vectors (stored for reorthogonalisation as well) and
        their products, for the deflation space of the solves after it."""
        stop = targets.stopping(self.safety)
        lam = float(operator.damping)
        # the quadrature runs on S when deflating: its rounding carries the bounds
        delta = float((deflation or operator).rounding())
        products_before = operator.products
        b = jnp.asarray(rhs, operator.dtype)
        k = int(b.shape[0])
        norms = np.asarray(jnp.linalg.norm(b, axis=1), np.float64)
        safe = np.where(norms > 0, norms, 1.0)
        scale2 = np.outer(safe, safe)
        unit = b / jnp.asarray(safe, b.dtype)[:, None]
        start, coarse_gram = deflation.prepare(unit) if deflation is not None else (unit, 0.0)
        coarse_sq = 0.0 if deflation is None else np.sum(deflation.coarse(unit, jnp.zeros_like(unit)) ** 2, axis=1)
        basis_bytes = self.basis_bytes if self.basis_bytes is not None else default_basis_bytes()
        if recycle is not None:  # its vectors are this solve's basis, reorthogonalised against as any
            basis_bytes = max(basis_bytes, recycle.vectors * int(b.shape[1]) * np.dtype(b.dtype).itemsize)
        lanczos = BlockLanczosProcess(
            deflation or operator, start,
            basis_bytes=basis_bytes,
            rank_tol=self.rank_tol, keep_products=0 if recycle is None else recycle.vectors,
        )
        # With the operator's rounding at lambda / 2 or above no quadrature bound holds
        # (certify.quadrature_carry): the recurrence then only steers, at the usual node.
        carry = quadrature_carry(lam, delta)
        quad = _RadauRecurrence(lanczos, radau_shift(lam, delta) if carry else MU_FRACTION * lam, k, b.dtype)
        margin, extensions, breakdowns = 1.0, 0, 0
        t0 = time.perf_counter()
        while True:
            best, since, stalled = np.inf, 0, False
            while lanczos.steps < self.max_steps and lanczos.block_size > 0 and not quad.broken:
                e_gr = quad.step()
                if quad.broken:
                    breakdowns += 1
                    break
                x_norm = np.asarray(jnp.linalg.norm(quad.x, axis=1), np.float64)  # of the unit right-hand sides
                if deflation is not None:  # and its part in span(Z) (orthogonal to y), at y = 0: a stopping
                    x_norm = np.sqrt(x_norm**2 + coarse_sq)  # estimate only; finish bounds the exact x
                # what rounding puts under the final bounds, where finish puts it: the residual's slack
                # in each energy error, the forms' rounding (x_i . (r_j - fl(r_j)) and the float64
                # sums) beside them (it enters a cross entry once, not through sqrt(e_i e_j))
                e = e_gr * (carry or 1.0) + (delta * x_norm) ** 2 / lam
                forms = delta * np.outer(x_norm, x_norm) + form_gamma(lanczos.n) * (x_norm[:, None] + x_norm[None, :])
                gauss = coarse_gram + quad.gauss
                _, worst = stop(0.5 * (gauss + gauss.T) * scale2, np.nan_to_num(e, nan=np.inf) * safe**2,
                                forms * scale2)
                if progress is not None:
                    progress(lanczos.steps, operator.products - products_before, worst)
                if worst <= margin:
                    break
                # progress: the largest relative energy error, finite long before every bound is
                with np.errstate(divide="ignore", invalid="ignore"):
                    measure = float(np.max(np.where(np.diagonal(quad.gauss) > 0, e / np.diagonal(quad.gauss), np.inf)))
                best, since = (measure, 0) if measure < STALL_FACTOR * best else (best, since + 1)
                if since >= max(STALL_STEPS, lanczos.steps // 2):
                    stalled = True
                    break
            scale = jnp.asarray(safe, b.dtype)[:, None]
            out_of_steps = lanczos.steps >= self.max_steps
            notes = ["the Gauss-Radau quadrature broke down (a pivot or M_k not positive definite): values "
                     "bounded by their residuals alone"] if quad.broken else []
            x = quad.x if deflation is None else deflation.recover(unit, quad.x)
            sol = finish(operator, b, x * scale, targets, iterations=lanczos.steps,
                         products_before=products_before, out_of_steps=out_of_steps,
                         stagnated=stalled or quad.broken, notes=notes,
                         quadrature_bound=None if quad.broken else quad.e_gr * safe**2,  # finish drops it without carry
                         recursive_residual=quad.recursive() * scale, quadrature_rounding=delta)
            certified = sol.result is Result.CERTIFIED
            if (certified or out_of_steps or lanczos.block_size == 0 or stalled or quad.broken
                    or extensions >= MAX_EXTENSIONS):
                break
            extensions += 1
            margin *= EXTENSION_FACTOR
        if recycle is not None:
            recycle.collect(lanczos)
        with np.errstate(divide="ignore", invalid="ignore"):
            column_error = np.asarray(sol.error_bound) / np.abs(np.diagonal(sol.gram))
        stats = {
            # the spread says what freezing converged columns could save: little when narrow
            "column_relative_error_min": float(np.nanmin(column_error)),
            "column_relative_error_max": float(np.nanmax(column_error)),
            "block_steps": int(lanczos.steps), "krylov_dimension": int(lanczos.dimension),
            "basis_vectors_stored": int(lanczos.stored), "basis_capacity": int(lanczos.capacity),
            "extensions": int(extensions), "seconds": round(time.perf_counter() - t0, 3),
            "operator_norm_estimate": float(lanczos.norm_estimate), "gauss_radau_breakdowns": breakdowns,
            "invariant_subspace": bool(lanczos.block_size == 0),
            "deflation_vectors": 0 if deflation is None else deflation.k,
        }
        return sol._replace(stats={**sol.stats, **stats})


class _RadauRecurrence:
    """The block LDL^T recurrences on ``T`` of one solve (module docstring): the iterate
    ``x``, the Gauss estimates ``gauss`` and the Gauss-Radau bounds ``e_gr`` after each
    ``step()``; ``broken`` once a pivot, an ``M_k`` or a form says the quadrature broke down."""

    def __init__(self, lanczos, mu: float, k: int, dtype):
        self.lanczos, self.mu, self.dtype = lanczos, float(mu), dtype
        self.psi = lanczos.rho0  # (s_1, k)
        self.x = jnp.zeros((k, lanczos.n), dtype)
        self.gauss = np.zeros((k, k))
        self.e_gr = np.full(k, np.inf)
        self.broken = False
        self._prev = None  # (beta, P_{j-1}, D_{j-1}^-1, (D^mu_{j-1})^-1)

    def step(self) -> np.ndarray:
        v_j = self.lanczos.V
        omega, beta_next = self.lanczos.step()
        shift = self.mu * np.eye(omega.shape[0])
        if self._prev is None:
            d, dmu, p_j = omega, omega - shift, v_j
        else:
            beta, p_prev, d_inv_prev, dmu_inv_prev = self._prev
            d = omega - beta @ d_inv_prev @ beta.T
            dmu = omega - shift - beta @ dmu_inv_prev @ beta.T
            p_j = v_j - _combine(jnp.asarray(beta @ d_inv_prev, self.dtype), p_prev)
        d_inv, dmu_inv = _inv_spd(d), _inv_spd(dmu)
        coef = d_inv @ self.psi  # (s_j, k)
        self.x = self.x + _combine(jnp.asarray(coef.T, self.dtype), p_j)
        self.gauss = self.gauss + self.psi.T @ coef
        c = beta_next @ coef  # (s_{j+1}, k): R_j = -V_{j+1} C
        self.broken = not _positive_definite(dmu)
        if c.shape[0] and not self.broken:
            m = self.mu * np.eye(c.shape[0]) + beta_next @ (dmu_inv - d_inv) @ beta_next.T
            m = 0.5 * (m + m.T)
            forms = np.einsum("ik,ik->k", c, np.linalg.solve(m, c)) if _positive_definite(m) else None
            self.broken = forms is None or bool(np.any(forms < 0))
        else:
            forms = np.zeros_like(self.e_gr)  # invariant subspace: exact in exact arithmetic
        self.e_gr = np.full_like(self.e_gr, np.inf) if self.broken else forms
        self.psi, self._prev = -c, (beta_next, p_j, d_inv, dmu_inv)
        return self.e_gr

    def recursive(self):
        """The recursive residual ``R_k = -V_{k+1} C_k`` of the unscaled right-hand sides."""
        if not self.psi.shape[0]:
            return jnp.zeros_like(self.x)
        return _combine(jnp.asarray(self.psi.T, self.dtype), self.lanczos.V)


def _positive_definite(a: np.ndarray) -> bool:
    return bool(a.size == 0 or np.linalg.eigvalsh(0.5 * (a + a.T)).min() > 0)
