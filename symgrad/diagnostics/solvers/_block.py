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

``mu = MU_FRACTION * lambda``: ``lambda_min(A) >= lambda`` exactly (G is PSD), and the
margin keeps ``T - mu I`` well conditioned when Ritz values converge to lambda (the null
space of G is an eigenspace of A at lambda). The proof is in docs/overlap.md section 3.

The loop stops when the stopping rule, given ``S_k`` and these bounds, says every value is
certified with margin; then the explicit residuals are computed and, should the final
certificate fail (rounding, deflation), the same process continues with a tighter margin.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.solvers._base import ChiSolution, SolverBase, device_memory_bytes, finish
from symgrad.diagnostics.solvers._lanczos import BlockLanczos, _combine

MU_FRACTION = 0.99
# After a failed final certificate the loop goes on until the margin is this much tighter,
# at most MAX_EXTENSIONS times.
EXTENSION_FACTOR = 0.1
MAX_EXTENSIONS = 3


def _inv_spd(a: np.ndarray) -> np.ndarray:
    a = 0.5 * (a + a.T)
    inv = np.linalg.inv(a)
    return 0.5 * (inv + inv.T)


def default_basis_bytes() -> int:
    """A quarter of the accelerator's memory, or of the host's when computing on the CPU."""
    return device_memory_bytes() // 4


class BlockLanczosSolver(SolverBase):
    """``--solver block``: the default. See the module docstring."""

    name = "block"

    def solve(self, operator, rhs, stop, *, residual_cap=None, progress=None) -> ChiSolution:
        st = self.settings
        products_before = operator.products
        b = jnp.asarray(rhs, operator.dtype)
        k = int(b.shape[0])
        norms = np.asarray(jnp.linalg.norm(b, axis=1), np.float64)
        safe = np.where(norms > 0, norms, 1.0)
        scale2 = np.outer(safe, safe)
        lanczos = BlockLanczos(
            operator, b / jnp.asarray(safe, b.dtype)[:, None],
            basis_bytes=st.basis_memory if st.basis_memory is not None else default_basis_bytes(),
            rank_tol=st.rank_tol,
        )
        lam = float(operator.damping)
        mu = MU_FRACTION * lam
        psi = lanczos.rho0  # (s_1, k)
        x = jnp.zeros_like(b)
        gauss = np.zeros((k, k))
        p_prev = d_inv_prev = dmu_inv_prev = beta = None
        margin, extensions = 1.0, 0
        e_gr = np.full(k, np.inf)
        c = np.zeros((0, k))
        t0 = time.perf_counter()
        while True:
            while lanczos.steps < st.max_iterations and lanczos.block_size > 0:
                v_j = lanczos.V
                omega, beta_next = lanczos.step()
                eye = np.eye(omega.shape[0])
                if beta is None:
                    d, dmu, p_j = omega, omega - mu * eye, v_j
                else:
                    d = omega - beta @ d_inv_prev @ beta.T
                    dmu = omega - mu * eye - beta @ dmu_inv_prev @ beta.T
                    p_j = v_j - _combine(jnp.asarray(beta @ d_inv_prev, b.dtype), p_prev)
                d_inv, dmu_inv = _inv_spd(d), _inv_spd(dmu)
                coef = d_inv @ psi  # (s_j, k)
                x = x + _combine(jnp.asarray(coef.T, b.dtype), p_j)
                gauss = gauss + psi.T @ coef
                c = beta_next @ coef  # (s_{j+1}, k): R_j = -V_{j+1} C
                if c.shape[0]:
                    m = mu * np.eye(c.shape[0]) + beta_next @ (dmu_inv - d_inv) @ beta_next.T
                    e_gr = np.maximum(np.einsum("ik,ik->k", c, np.linalg.solve(0.5 * (m + m.T), c)), 0.0)
                else:
                    e_gr = np.zeros(k)  # invariant subspace: exact in exact arithmetic
                _, worst = stop(0.5 * (gauss + gauss.T) * scale2, e_gr * safe**2)
                if progress is not None:
                    progress(lanczos.steps, operator.products - products_before, worst)
                psi, beta, p_prev, d_inv_prev, dmu_inv_prev = -c, beta_next, p_j, d_inv, dmu_inv
                if worst <= margin:
                    break
            recursive = _combine(jnp.asarray(psi.T, b.dtype), lanczos.V) if psi.shape[0] else jnp.zeros_like(b)
            scale = jnp.asarray(safe, b.dtype)[:, None]
            sol = finish(operator, b, x * scale, iterations=lanczos.steps, converged=False,
                         products_before=products_before, quadrature_bound=e_gr * safe**2,
                         recursive_residual=recursive * scale)
            certified = bool(stop.certified(sol.gram, sol.error_bound))
            out_of_steps = lanczos.steps >= st.max_iterations or lanczos.block_size == 0
            if certified or out_of_steps or extensions >= MAX_EXTENSIONS:
                break
            extensions += 1
            margin *= EXTENSION_FACTOR
        with np.errstate(divide="ignore", invalid="ignore"):
            column_error = np.asarray(sol.error_bound) / np.abs(np.diagonal(sol.gram))
        stats = {
            # the spread says what freezing converged columns could save: little when narrow
            "column_relative_error_min": float(np.nanmin(column_error)),
            "column_relative_error_max": float(np.nanmax(column_error)),
            "block_steps": int(lanczos.steps), "krylov_dimension": int(lanczos.dimension),
            "basis_vectors_stored": int(lanczos.stored), "basis_capacity": int(lanczos.capacity),
            "extensions": int(extensions), "seconds": round(time.perf_counter() - t0, 3),
            "operator_norm_estimate": float(lanczos.norm_estimate),
        }
        # "converged" for this solver: the final certificate held (the stopping rule is it)
        return sol._replace(stats=stats, converged=np.full(k, certified))
