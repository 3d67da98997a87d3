"""The spectrum probe: what the Gauss-Newton matrix G looks like, before a chi solve pays for it.

Block Lanczos on G from ``n_vectors`` Rademacher vectors z (seeded), ``steps`` block steps,
one block tridiagonal ``T``. From it, with no further products:

* the top eigenvalues of G (Ritz values of T) with their residual norms ``||B_{k+1} y_k||``
  (each interval ``[theta - res, theta + res]`` holds an eigenvalue of G);
* ``tr(G)`` by Hutchinson: ``z^T G z`` is exact from the first block, the error is the
  standard error of the mean over probe vectors;
* the effective dimension ``d_eff(lambda) = tr(G (G + lambda I)^-1) = E[z^T z - lambda z^T (G + lambda I)^-1 z]``
  for every lambda of ``dampings``: block Gauss and Gauss-Radau quadrature on ``T + lambda I``
  bound each ``z^T (G + lambda I)^-1 z`` from both sides, so each probe vector's term lies
  in an interval (rigorous in exact arithmetic), and the Hutchinson average carries a
  stated standard error.

``d_eff(lambda)`` is what a chi solve at damping lambda must resolve: the block solver's
Krylov dimension grew like d_eff on the measured spectra (docs/overlap.md section 4), and
``predicted_products`` turns it into a cost estimate.
"""

from __future__ import annotations

import numpy as np

from symgrad.diagnostics.certify import MU_FRACTION
from symgrad.diagnostics.solvers._lanczos import run_lanczos
from symgrad.names import DEFAULT_PROBE_STEPS, DEFAULT_PROBE_VECTORS

DEFAULT_DAMPINGS = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_VECTORS = DEFAULT_PROBE_VECTORS
DEFAULT_STEPS = DEFAULT_PROBE_STEPS
DEFAULT_TOP = 16
# The ratio of the block solver's Krylov dimension to d_eff(lambda) at rtol 1e-6 in the
# records of docs/overlap.md section 4; the cost prediction is this times d_eff.
KRYLOV_PER_DEFF = 0.5


def block_tridiagonal(omegas, betas) -> np.ndarray:
    """The dense symmetric ``T`` from diagonal blocks ``Omega_j`` and sub-diagonal blocks ``B_{j+1}``."""
    offs = np.concatenate([[0], np.cumsum([o.shape[0] for o in omegas])]).astype(int)
    t = np.zeros((offs[-1], offs[-1]))
    for j, o in enumerate(omegas):
        t[offs[j]:offs[j + 1], offs[j]:offs[j + 1]] = o
        if j + 1 < len(omegas):
            t[offs[j + 1]:offs[j + 2], offs[j]:offs[j + 1]] = betas[j]
            t[offs[j]:offs[j + 1], offs[j + 1]:offs[j + 2]] = betas[j].T
    return t


def _quadrature(t, beta_last, rho0, lam, s1):
    """Block Gauss and Gauss-Radau estimates of ``rho0^T ((T + lam)^-1)_{11} rho0`` (diagonals)."""
    n = t.shape[0]
    a = t + lam * np.eye(n)
    e1 = np.zeros((n, s1))
    e1[:s1, :s1] = np.eye(s1)
    y = np.linalg.solve(a, e1 @ rho0)  # (n, k)
    gauss = np.einsum("nk,nk->k", (e1 @ rho0), y)
    s_last = beta_last.shape[0]
    if s_last == 0:
        return gauss, gauss
    mu = MU_FRACTION * lam  # the same margin below lambda_min as the solver (solvers._block)
    f = np.zeros((n, s_last))
    s_k = beta_last.shape[1]
    f[n - s_k:, :] = beta_last.T  # F = E_k B_{k+1}^T
    omega_gr = mu * np.eye(s_last) + f.T @ np.linalg.solve(a - mu * np.eye(n), f)
    ainv_f = np.linalg.solve(a, f)
    schur = omega_gr - f.T @ ainv_f
    w = (e1 @ rho0).T @ ainv_f  # (k, s_last): first block of (T^-1 F)^T rho0
    radau = gauss + np.einsum("ks,ks->k", w, np.linalg.solve(schur, w.T).T)
    return gauss, radau


def probe_spectrum(operator, *, n_vectors: int = DEFAULT_VECTORS, steps: int = DEFAULT_STEPS,
                   dampings=DEFAULT_DAMPINGS, n_top: int = DEFAULT_TOP, seed: int = 0,
                   basis_bytes: int | None = None, rank_bound: int | None = None) -> dict:
    """Top eigenvalues, trace and effective dimension of G (``operator`` at damping 0).

    ``rank_bound`` (outputs of the curvature batch) caps d_eff and is stored with it.
    Returns a JSON-serialisable dict (the summary stored in overlap results).
    """
    import jax
    import jax.numpy as jnp

    from symgrad.diagnostics.solvers._block import default_basis_bytes

    if operator.damping != 0:
        raise ValueError("probe_spectrum needs the undamped operator (damping 0)")
    n = operator.n_params
    products_before = operator.products
    key = jax.random.PRNGKey(seed)
    z = jax.random.rademacher(key, (n_vectors, n), dtype=operator.dtype)
    lanczos, omegas, betas = run_lanczos(operator, z, steps=steps,
                                         basis_bytes=default_basis_bytes() if basis_bytes is None else basis_bytes)
    t = block_tridiagonal(omegas, betas)
    rho0 = lanczos.rho0
    s1 = rho0.shape[0]
    theta, y = np.linalg.eigh(t)
    last = betas[-1] if betas else np.zeros((0, 0))
    k_last = last.shape[1] if last.size else 0
    res = np.linalg.norm(last @ y[t.shape[0] - k_last:], axis=0) if k_last else np.zeros_like(theta)
    order = np.argsort(theta)[::-1][:n_top]
    zgz = np.einsum("ik,ij,jk->k", rho0, omegas[0], rho0)
    zz = float(n)  # Rademacher: z^T z = P exactly
    lows, highs, mids, errs = [], [], [], []
    for lam in dampings:
        gauss, radau = _quadrature(t, last, rho0, float(lam), s1)
        lo, hi = zz - lam * radau, zz - lam * gauss  # d_eff term lies in [lo, hi] per probe vector
        lo = np.maximum(lo, 0.0)  # each term z^T G (G + lam)^-1 z >= 0: an unresolved radau bound says no more
        mid = 0.5 * (lo + hi)
        lows.append(float(np.mean(lo)))
        highs.append(float(np.mean(hi)))
        mids.append(float(np.mean(mid)))
        errs.append(float(np.std(mid, ddof=1) / np.sqrt(len(mid))) if len(mid) > 1 else float("nan"))
    if rank_bound is not None:
        lows, highs, mids = (list(np.minimum(a, rank_bound)) for a in (lows, highs, mids))
    return {
        "top_eigenvalues": [float(v) for v in theta[order]],
        "top_residuals": [float(v) for v in res[order]],
        "trace": float(np.mean(zgz)),
        "trace_stderr": float(np.std(zgz, ddof=1) / np.sqrt(len(zgz))) if len(zgz) > 1 else float("nan"),
        "dampings": [float(d) for d in dampings],
        "effective_dimension": [float(v) for v in mids],
        "effective_dimension_lower": [float(v) for v in lows],
        "effective_dimension_upper": [float(v) for v in highs],
        "effective_dimension_stderr": errs,
        "rank_bound": int(rank_bound) if rank_bound is not None else int(n),
        "probe_vectors": int(n_vectors), "probe_steps": int(lanczos.steps),
        "ggn_products": int(operator.products - products_before),
        "n_params": int(n), "dtype": str(jnp.dtype(operator.dtype)),
    }


def predicted_products(summary: dict, damping: float) -> tuple[float, float]:
    """The block solver's expected Gauss-Newton products at ``damping``: ``KRYLOV_PER_DEFF * d_eff``
    over the probe's quadrature interval of d_eff (interpolated in log lambda)."""
    lam = np.log(np.asarray(summary["dampings"]))
    at = np.log(damping)
    lo = np.interp(at, lam, summary["effective_dimension_lower"])
    hi = np.interp(at, lam, summary["effective_dimension_upper"])
    return KRYLOV_PER_DEFF * float(lo), KRYLOV_PER_DEFF * float(hi)
