"""Gradient overlaps across group orbits in the Euclidean and chi metrics (DESIGN.md section 5).

For transitions ``(x_i, y_i)`` and a group element ``g``::

    u_i^g = grad L(g.x_i, g.y_i),  v_j = grad L(x_j, y_j),  chi = (lambda I + G)^-1
    M^g_ij = <u_i^g, v_j>_chi  and  u_i^g . v_j
    overlap_frobenius = M^g_ii / ||M^g||_F,   overlap_cosine = M^g_ii / sqrt(<u,u>_chi <v,v>_chi)

Exact structure exploited (docs/overlap.md): ``v_j`` and ``w_j ~ chi v_j`` do not depend on
g, so N solves serve every element; each element adds N solves ``z_i ~ chi u_i^g`` (needed
for the cosine), which also give the corrected estimate ``u.w + z.r_v`` of every matrix
entry and the certified bound ``||r_u|| ||r_v|| / lambda``. An element whose gradients
equal the ``v`` bit for bit (the identity) reuses the v-solves.

Every chi value is stored with its bound, residual norms and iteration counts; values
whose bound exceeds the requested tolerance are flagged in ``tolerance_not_met``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from symgrad.diagnostics import _overlap_impl as impl
from symgrad.diagnostics._overlap_impl import SolveResult
from symgrad.diagnostics.gradients import per_example_gradients
from symgrad.errors import SymgradError
from symgrad.groups import Group
from symgrad.io import commit_file, write_netcdf_atomic

METRICS = ("chi", "euclidean", "both")
SOLVERS = ("cg", "lineax")
# The CG stopping rule aims at bound <= SAFETY * rtol * scale, so that the derived
# cosine (whose bound is ~ (1 + |cos|) times the entry bound) still meets rtol.
DEFAULT_SAFETY = 0.1
DEFAULT_MAX_STEPS = 10_000


class OverlapInterrupted(Exception):
    """Raised by ``compute_overlaps(..., stop_after=k)`` after k new elements (tests, resume)."""


# ----------------------------------------------------------------------------- solves


def chi_solve(
    apply_fn: Callable,
    params,
    x_curvature,
    sigma,
    rhs,
    *,
    damping: float,
    rtol: float = 1e-6,
    max_steps: int = DEFAULT_MAX_STEPS,
    rhs_chunk_size: int | None = None,
    output_hessian: Callable | None = None,
    solver: str = "cg",
    safety: float = DEFAULT_SAFETY,
    residual_cap=None,
) -> SolveResult:
    """Solve ``(lambda I + G) y_k = rhs_k`` for every row of ``rhs`` (K, P).

    ``G`` is the Gauss-Newton matrix of SMSE (or of ``output_hessian``) on ``x_curvature``.
    Right-hand sides are solved ``rhs_chunk_size`` at a time (all at once if None) in one
    jitted CG loop that linearises the model once per block and applies the operator to
    the whole block with ``vmap``. A row stops when ``||r||^2 <= safety * rtol * lambda *
    b^T y``, which certifies the bilinear forms built from two such solves to
    ``safety * rtol`` relative (docs/overlap.md). The returned residuals are recomputed
    explicitly. ``residual_cap`` (K,) additionally requires ``||r_k|| <= residual_cap[k]``.
    """
    if damping <= 0:
        raise SymgradError(f"the chi metric needs damping lambda > 0, got {damping}")
    if solver not in SOLVERS:
        raise SymgradError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    dtype = impl.ravel_dtype(params)
    rhs = jnp.asarray(rhs, dtype)
    x_curvature = jnp.asarray(x_curvature, dtype)
    sig = None if sigma is None else jnp.asarray(sigma, dtype)
    eta = jnp.asarray(safety * rtol * damping, dtype)
    lam = jnp.asarray(damping, dtype)
    k_total = rhs.shape[0]
    cap2 = jnp.full((k_total,), jnp.inf, dtype) if residual_cap is None else (
        jnp.broadcast_to(jnp.asarray(residual_cap, dtype), (k_total,)) ** 2)
    chunk = k_total if not rhs_chunk_size else min(int(rhs_chunk_size), k_total)
    parts = []
    for start in range(0, k_total, chunk):
        block = rhs[start : start + chunk]
        block_cap2 = cap2[start : start + chunk]
        if solver == "cg":
            res = impl.cg_solve_block(
                apply_fn, output_hessian, impl.RESIDUAL_REPLACEMENT_EVERY, params,
                x_curvature, sig, block, lam, eta, block_cap2, jnp.asarray(max_steps, jnp.int32),
            )
        else:
            res = impl.lineax_solve_block(
                apply_fn, output_hessian, int(max_steps), params, x_curvature, sig, block,
                lam, eta, block_cap2, jnp.asarray(rtol, dtype),
            )
        parts.append(res)
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: jnp.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return SolveResult(
        solution=cat("solution"), residual=cat("residual"), residual_norm=cat("residual_norm"),
        rhs_norm=cat("rhs_norm"), iterations=cat("iterations"), converged=cat("converged"),
        block_steps=sum(p.block_steps for p in parts),
        ggn_products=sum(p.ggn_products for p in parts),
    )


class _VSide:
    """Everything about the untransformed gradients that every element shares."""

    def __init__(self, v, solve: SolveResult | None, damping, n_params, dtype):
        self.v = np.asarray(v)
        self.norm = np.linalg.norm(self.v, axis=-1)
        self.solve = solve
        if solve is not None:
            self.w = np.asarray(solve.solution)
            self.r = np.asarray(solve.residual)
            r_eff = np.asarray(solve.residual_norm) + impl.roundoff_allowance(
                solve.rhs_norm, self.r, self.v, n_params, dtype
            )
            self.r_eff = r_eff
            self.chi_vv, self.chi_vv_bound = impl.chi_self(self.v, self.w, self.r, r_eff, damping)


def _element_result(u, v_side: _VSide, u_solve: SolveResult | None, damping, n_params, dtype, reused):
    """The per-element arrays saved in a partial file (numpy, float64 where it matters)."""
    out = {
        "overlap_matrix_euclidean": np.asarray(u @ v_side.v.T, dtype=np.float64),
        "grad_norm_u": np.linalg.norm(u, axis=-1).astype(np.float64),
    }
    if u_solve is None:
        return out
    z = np.asarray(u_solve.solution)
    r_u = np.asarray(u_solve.residual)
    r_u_eff = np.asarray(u_solve.residual_norm) + impl.roundoff_allowance(
        u_solve.rhs_norm, r_u, u, n_params, dtype
    )
    m, m_bound = impl.chi_bilinear(u, z, r_u_eff, v_side.w, v_side.r, v_side.r_eff, damping)
    uu, uu_bound = impl.chi_self(u, z, r_u, r_u_eff, damping)
    out.update(
        overlap_matrix_chi=np.asarray(m, np.float64),
        overlap_matrix_chi_bound=np.asarray(m_bound, np.float64),
        chi_uu=np.asarray(uu, np.float64),
        chi_uu_bound=np.asarray(uu_bound, np.float64),
        residual_norm_u=np.asarray(u_solve.residual_norm, np.float64),
        cg_iterations_u=np.asarray(u_solve.iterations, np.int32),
        solver_converged_u=np.asarray(u_solve.converged, bool),
        ggn_products_u=np.asarray(0 if reused else int(u_solve.ggn_products), np.int64),
        reused_v_solves=np.asarray(bool(reused)),
    )
    return out


# ----------------------------------------------------------------------------- partials


def _fingerprint(flat_params, x, y, sigma, x_curv, settings: dict) -> str:
    h = hashlib.sha256()
    for arr in (flat_params, x, y, sigma, x_curv):
        a = np.ascontiguousarray(np.asarray(arr)) if arr is not None else np.zeros(0)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class _Partials:
    """``DIR/fingerprint.json``, ``DIR/v_solves.npz``, ``DIR/element_<k>.nc``; all atomic."""

    def __init__(self, directory, fingerprint: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = self.dir / "fingerprint.json"
        if stamp.exists():
            old = json.loads(stamp.read_text()).get("fingerprint")
            if old != fingerprint:
                raise SymgradError(
                    f"partial results in {self.dir} were computed from different inputs or "
                    "settings; delete that directory to start afresh, or rerun with the "
                    "original inputs to resume"
                )
        else:
            tmp = self.dir / ".fingerprint.json.tmp"
            tmp.write_text(json.dumps({"fingerprint": fingerprint}))
            commit_file(tmp, stamp)

    def _element_path(self, k):
        return self.dir / f"element_{k}.nc"

    def load_element(self, k):
        path = self._element_path(k)
        if not path.exists():
            return None
        with xr.open_dataset(path) as ds:
            return {name: ds[name].values for name in ds.data_vars}

    def save_element(self, k, result: dict):
        dims = {2: ("sample_i", "sample_j"), 1: ("sample",), 0: ()}
        ds = xr.Dataset({n: (dims[np.ndim(a)], np.asarray(a)) for n, a in result.items()})
        write_netcdf_atomic(ds, self._element_path(k))

    def load_v(self):
        path = self.dir / "v_solves.npz"
        if not path.exists():
            return None
        with np.load(path) as f:
            return {k: f[k] for k in f.files}

    def save_v(self, arrays: dict):
        path = self.dir / "v_solves.npz"
        tmp = self.dir / ".v_solves.npz.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        commit_file(tmp, path)


def remove_partials(directory) -> None:
    """Delete a partial-results directory once the final result is safely written."""
    if directory is not None and Path(directory).exists():
        shutil.rmtree(directory)


# ----------------------------------------------------------------------------- main API


def compute_overlaps(
    apply_fn: Callable,
    params,
    x,
    y,
    sigma,
    group: Group,
    *,
    metric: str = "both",
    damping: float = 1e-6,
    rtol: float = 1e-6,
    max_steps: int = DEFAULT_MAX_STEPS,
    x_curvature=None,
    loss_fn: Callable | None = None,
    output_hessian: Callable | None = None,
    grad_chunk_size: int | None = 8,
    rhs_chunk_size: int | None = None,
    solver: str = "cg",
    safety: float = DEFAULT_SAFETY,
    sample_ids: Sequence | None = None,
    partial_dir: str | os.PathLike | None = None,
    progress: bool = False,
    stop_after: int | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Overlap matrices and per-sample overlaps of ``u_i^g`` with ``v_j`` for every ``g``.

    ``apply_fn(params, x) -> y`` is any model on batches ``(n, nx, ny, c)`` (for symgrad's
    surrogates, the sigma-wrapped physical map). The loss is SMSE with ``sigma`` unless
    ``loss_fn(pred, target) -> (n,)`` is given; the Gauss-Newton output Hessian is SMSE's
    unless ``output_hessian(pred, t) -> H t`` is given (a custom loss needs both). A custom
    ``output_hessian`` must be positive semi-definite: the error bounds use
    ``||(lambda I + G)^-1|| <= 1 / lambda``, which an indefinite H breaks.
    ``x_curvature`` is the curvature batch B (default ``x``). ``metric`` is ``"chi"``,
    ``"euclidean"`` or ``"both"`` (the Euclidean matrices come for free with chi).

    With ``partial_dir``, the shared v-solves and each finished element are saved there and
    a rerun with the same inputs resumes. ``stop_after=k`` raises ``OverlapInterrupted``
    after k newly computed elements. Returns the dataset described in docs/overlap.md.
    """
    if metric not in METRICS:
        raise SymgradError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    want_chi = metric in ("chi", "both")
    if want_chi and not damping > 0:
        raise SymgradError(f"the chi metric needs damping lambda > 0, got {damping}")
    if not rtol > 0:
        raise SymgradError(f"rtol must be positive, got {rtol}")
    if loss_fn is not None and want_chi and output_hessian is None:
        raise SymgradError("a custom loss_fn needs its output_hessian for the chi metric")
    flat, _ = ravel_pytree(params)
    dtype = flat.dtype
    n_params = int(flat.shape[0])
    x = jnp.asarray(x, dtype)
    y = jnp.asarray(y, dtype)
    if x.shape != y.shape or x.ndim != 4:
        raise SymgradError(f"x and y must both be (n, nx, ny, c), got {x.shape} and {y.shape}")
    n = x.shape[0]
    x_curv = x if x_curvature is None else jnp.asarray(x_curvature, dtype)
    loss_name = "smse" if loss_fn is None else getattr(loss_fn, "__qualname__", type(loss_fn).__name__)
    hessian_name = "smse" if output_hessian is None else getattr(
        output_hessian, "__qualname__", type(output_hessian).__name__)
    solve_kw = dict(
        damping=float(damping), rtol=float(rtol), max_steps=int(max_steps),
        rhs_chunk_size=rhs_chunk_size, output_hessian=output_hessian, solver=solver,
        safety=float(safety),
    )
    sigma_arr = None if sigma is None else jnp.asarray(sigma, dtype)
    grads = lambda xs, ys: per_example_gradients(  # noqa: E731
        apply_fn, params, xs, ys, sigma_arr, loss_fn=loss_fn, chunk_size=grad_chunk_size
    )
    solve = lambda rhs, cap=None: chi_solve(  # noqa: E731
        apply_fn, params, x_curv, sigma, rhs, residual_cap=cap, **solve_kw)

    partials = None
    if partial_dir is not None:
        settings = dict(solve_kw, metric=metric, group=group.name, elements=list(group.elements),
                        loss=loss_name, output_hessian=hessian_name, n_params=n_params)
        settings.pop("rhs_chunk_size")  # changes the schedule, not the result
        partials = _Partials(partial_dir, _fingerprint(flat, x, y, sigma, x_curv, settings))

    v = grads(x, y)
    v_solve = None
    if want_chi:
        saved = partials.load_v() if partials is not None else None
        if saved is not None:
            v_solve = SolveResult(**{k: saved[k] for k in SolveResult._fields})
        else:
            v_solve = jax.device_get(solve(v))
            if partials is not None:
                partials.save_v({k: np.asarray(getattr(v_solve, k)) for k in SolveResult._fields})
    v_side = _VSide(v, v_solve, float(damping), n_params, dtype)
    v_np = v_side.v

    results = []
    computed = 0
    bar = _progress(len(group), progress, f"overlap {group.name}")
    try:
        for k, element in enumerate(group.elements):
            res = partials.load_element(k) if partials is not None else None
            if res is None:
                if stop_after is not None and computed >= stop_after:
                    raise OverlapInterrupted(f"stopped after {computed} new elements")
                u = grads(group.act(element, x), group.act(element, y))
                u_np = np.asarray(u)
                u_solve, reused = None, False
                if want_chi:
                    if np.array_equal(u_np, v_np):
                        u_solve, reused = v_solve, True
                    else:
                        u_solve = jax.device_get(solve(u, _u_residual_cap(u_np, v_side, rtol, damping, safety)))
                res = _element_result(u_np, v_side, u_solve, float(damping), n_params, dtype, reused)
                if partials is not None:
                    partials.save_element(k, res)
                computed += 1
            results.append(res)
            bar.update(1)
    finally:
        bar.close()

    return build_result_dataset(
        group, results, v_side, metric=metric, rtol=float(rtol), damping=float(damping),
        sample_ids=sample_ids if sample_ids is not None else np.arange(n),
        n_params=n_params, dtype=str(np.dtype(dtype)), solver=solver, safety=float(safety),
        max_steps=int(max_steps), curvature_batch_size=int(x_curv.shape[0]), attrs=attrs,
    )


def _u_residual_cap(u, v_side: _VSide, rtol, damping, safety):
    """Absolute residual target for the u-solves that also certifies the Frobenius overlap.

    The bound matrix is ``B_ij = ||r_ui|| ||r_vj|| / lambda``, so ``||B||_F = ||r_u|| ||r_v|| /
    lambda``. Capping every ``||r_ui|| <= safety rtol lambda ||M||_F / (sqrt(N) ||r_v||)``
    makes ``||B||_F <= safety rtol ||M||_F``. ``||M||_F`` is estimated by ``||U W^T||_F``
    (needs no u-solve); the cap only steers CG, the bounds stay rigorous regardless.
    """
    fro = np.linalg.norm(u @ v_side.w.T)
    rv = np.linalg.norm(v_side.r_eff)
    if not rv > 0:
        return None
    cap = safety * rtol * damping * fro / (np.sqrt(u.shape[0]) * rv)
    # A non-finite gradient (NaN cap) or orthogonal blocks (zero cap) would make CG run to
    # max_steps for nothing; fall back to the energy criterion (the flags stay rigorous).
    return cap if np.isfinite(cap) and cap > 0 else None


def _progress(total, enabled, desc):
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="element")

    class _Null:
        def update(self, _):
            pass

        def close(self):
            pass

    return _Null()


# ----------------------------------------------------------------------------- dataset


def _var(dims, data, long_name, units="1", **extra):
    return (dims, np.asarray(data), {"long_name": long_name, "units": units, **extra})


def build_result_dataset(
    group: Group,
    results: list[dict],
    v_side,
    *,
    metric: str,
    rtol: float,
    damping: float,
    sample_ids,
    n_params: int,
    dtype: str,
    solver: str,
    safety: float,
    max_steps: int,
    curvature_batch_size: int,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Assemble per-element results into the result dataset (schema in docs/overlap.md)."""
    ee = ("element", "sample")
    mm = ("element", "sample_i", "sample_j")
    stack = lambda name: np.stack([r[name] for r in results])  # noqa: E731
    m_euc = stack("overlap_matrix_euclidean")
    diag = lambda m: np.diagonal(m, axis1=-2, axis2=-1)  # noqa: E731
    norm_u = stack("grad_norm_u")
    norm_v = np.asarray(v_side.norm, np.float64)
    fro_euc = diag(m_euc) / np.linalg.norm(m_euc, axis=(-2, -1))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_euc = diag(m_euc) / (norm_u * norm_v[None, :])
    data = {
        "overlap_matrix_euclidean": _var(mm, m_euc, "Euclidean gradient overlap u_i^g . v_j", "1"),
        "overlap_cosine_euclidean": _var(ee, cos_euc, "Euclidean cosine of u_i^g and v_i"),
        "overlap_frobenius_euclidean": _var(ee, fro_euc, "Euclidean M^g_ii / ||M^g||_F"),
        "grad_norm_u": _var(ee, norm_u, "Euclidean norm of u_i^g = grad L(g.x_i, g.y_i)"),
        "grad_norm_v": _var(("sample",), norm_v, "Euclidean norm of v_i = grad L(x_i, y_i)"),
    }
    n_flagged = 0
    total_products = 0
    if metric in ("chi", "both"):
        m = stack("overlap_matrix_chi")
        mb = stack("overlap_matrix_chi_bound")
        uu, uub = stack("chi_uu"), stack("chi_uu_bound")
        vv, vvb = np.asarray(v_side.chi_vv, np.float64), np.asarray(v_side.chi_vv_bound, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.sqrt(np.abs(uu)[:, :, None] * np.abs(vv)[None, None, :])
            rel = mb / scale
        matrix_flag = ~(rel <= rtol)  # NaN counts as not met
        cos, cos_b = impl.ratio_interval_bound(
            diag(m), diag(mb), [uu, np.broadcast_to(vv, uu.shape)],
            [uub, np.broadcast_to(vvb, uu.shape)], sqrt_den=True,
        )
        fro_norm = np.linalg.norm(m, axis=(-2, -1))
        fro_err = np.linalg.norm(mb, axis=(-2, -1))
        fro, fro_b = impl.ratio_interval_bound(
            diag(m), diag(mb), [np.broadcast_to(fro_norm[:, None], uu.shape)],
            [np.broadcast_to(fro_err[:, None], uu.shape)], sqrt_den=False,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            uu_rel, vv_rel = uub / np.abs(uu), vvb / np.abs(vv)
        flag = (
            ~(cos_b <= rtol) | ~(fro_b <= rtol) | ~(uu_rel <= rtol) | ~(vv_rel <= rtol)[None, :]
            | matrix_flag.any(axis=-1) | ~np.isfinite(cos) | ~np.isfinite(fro)
        )
        n_flagged = int(flag.sum())
        v_solve = v_side.solve
        v_products = int(np.asarray(v_solve.ggn_products))
        u_products = stack("ggn_products_u").astype(np.int64)
        total_products = v_products + int(u_products.sum())
        it_u = stack("cg_iterations_u")
        data.update(
            overlap_matrix_chi=_var(mm, m, "chi-metric gradient overlap <u_i^g, v_j>_chi (corrected estimate)", "1"),
            overlap_matrix_chi_bound=_var(mm, mb, "certified bound on |error| of overlap_matrix_chi", "1"),
            overlap_matrix_chi_flag=_var(mm, matrix_flag, "bound / sqrt(chi_uu_i chi_vv_j) exceeds rtol", "1"),
            overlap_cosine_chi=_var(ee, cos, "chi cosine <u_i^g, v_i>_chi / sqrt(<u,u>_chi <v,v>_chi)"),
            overlap_cosine_chi_bound=_var(ee, cos_b, "certified bound on |error| of overlap_cosine_chi"),
            overlap_frobenius_chi=_var(ee, fro, "chi M^g_ii / ||M^g||_F"),
            overlap_frobenius_chi_bound=_var(ee, fro_b, "certified bound on |error| of overlap_frobenius_chi"),
            chi_uu=_var(ee, uu, "<u_i^g, u_i^g>_chi (corrected estimate)"),
            chi_uu_bound=_var(ee, uub, "certified bound on |error| of chi_uu"),
            chi_vv=_var(("sample",), vv, "<v_i, v_i>_chi (corrected estimate)"),
            chi_vv_bound=_var(("sample",), vvb, "certified bound on |error| of chi_vv"),
            residual_norm_u=_var(ee, stack("residual_norm_u"), "||u - (lambda I + G) z||_2, recomputed explicitly"),
            residual_norm_v=_var(("sample",), np.asarray(v_solve.residual_norm, np.float64), "||v - (lambda I + G) w||_2, recomputed explicitly"),
            cg_iterations_u=_var(ee, it_u, "CG iterations of the chi-solve for u_i^g", "count"),
            cg_iterations_v=_var(("sample",), np.asarray(v_solve.iterations, np.int32), "CG iterations of the chi-solve for v_i", "count"),
            converged_u=_var(ee, stack("solver_converged_u"), "chi-solve of u_i^g met its stopping rule (explicit residual)"),
            converged_v=_var(("sample",), np.asarray(v_solve.converged, bool), "chi-solve of v_i met its stopping rule (explicit residual)"),
            ggn_products_u=_var(("element",), u_products, "Gauss-Newton products spent on this element's u-solves", "count"),
            reused_v_solves=_var(("element",), stack("reused_v_solves").astype(bool), "u^g == v bit for bit, v-solves reused"),
            tolerance_not_met=_var(ee, flag, "some chi value of (element, sample) has bound above rtol (see docs/overlap.md)"),
        )
    elements = list(group.elements)
    sample_ids = np.asarray(sample_ids)
    ds = xr.Dataset(
        {k: v for k, v in data.items()},
        coords={
            "element": ("element", np.asarray(elements), {"long_name": group.element_long_name}),
            "sample": ("sample", sample_ids, {"long_name": "sample index"}),
            "sample_i": ("sample_i", sample_ids, {"long_name": "sample index of u_i^g"}),
            "sample_j": ("sample_j", sample_ids, {"long_name": "sample index of v_j"}),
        },
    )
    ds.attrs.update(
        {
            "title": f"symgrad gradient overlaps, group {group.name}",
            "group": group.name,
            "metric": metric,
            "rtol": float(rtol),
            "damping": float(damping),
            "solver": solver,
            "cg_safety": float(safety),
            "max_steps": int(max_steps),
            "n_params": int(n_params),
            "dtype": dtype,
            "curvature_batch_size": int(curvature_batch_size),
            "ggn_products": int(total_products),
            "n_flagged": int(n_flagged),
            "tolerance_definition": (
                "tolerance_not_met(g,i) is true unless: bound(cosine) <= rtol, bound(frobenius) <= rtol, "
                "chi_uu_bound/chi_uu <= rtol, chi_vv_bound/chi_vv <= rtol and, for every j, "
                "overlap_matrix_chi_bound[g,i,j] / sqrt(chi_uu[g,i] chi_vv[j]) <= rtol"
            ),
        }
    )
    if attrs:
        ds.attrs.update(attrs)
    return ds
