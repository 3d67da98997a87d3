"""Gradient overlaps across group orbits in the Euclidean and chi metrics: orchestration only.

For transitions ``(x_i, y_i)`` and a group element ``g``::

    u_i^g = grad L(g.x_i, g.y_i),  v_j = grad L(x_j, y_j),  chi = (lambda I + G)^-1
    M^g_ij = <u_i^g, v_j>_chi  and  u_i^g . v_j
    overlap_frobenius = M^g_ii / ||M^g||_F,   overlap_cosine = M^g_ii / sqrt(<u,u>_chi <v,v>_chi)

The parts: per-example gradients (``gradients``), the Gauss-Newton operator (``ggn``), the
spectrum probe (``spectrum``), the chi solvers (``solvers``), bounds, flags and stopping
rules (``certify``), partial results and the result schema (``store``). This module
plans right-hand-side chunks, runs them and assembles the result (docs/overlap.md).

Exact structure used: the v's do not depend on g and are solved once; an element whose
gradients equal the v's bit for bit (the identity) reuses their solves; every other
element's u's join the same block Krylov space as the v's when memory allows (one chunk),
which is where the fast path's factor comes from.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from symgrad import preemption
from symgrad.diagnostics import certify, store
from symgrad.diagnostics.config import OverlapConfig, checked
from symgrad.diagnostics.ggn import GaussNewtonBlocks
from symgrad.diagnostics.gradients import per_example_gradients
from symgrad.diagnostics.precision import cast, computing_in
from symgrad.diagnostics.solvers import ChiSolver, Targets, corrected_cross, device_memory_bytes, euclidean_gram
from symgrad.diagnostics.solvers._base import row_norms
from symgrad.diagnostics.spectrum import KRYLOV_PER_DEFF, predicted_products, probe_spectrum
from symgrad.errors import SymgradError
from symgrad.groups import Group

remove_partials = store.remove_partials


class OverlapInterrupted(Exception):
    """Raised by ``compute_overlaps(..., stop_after=k)`` after k newly solved chunks (tests,
    resume), and before the next chunk once SIGTERM arrived (``symgrad.preemption``)."""


def chi_solve(apply_fn: Callable, params, x_curvature, sigma, rhs, config: OverlapConfig | None = None, *,
              output_hessian: Callable | None = None):
    """Solve ``(lambda I + G) x_k = rhs_k`` for every row of ``rhs`` (K, P), certified to ``config.rtol``.

    ``G`` is the Gauss-Newton matrix of SMSE (or of ``output_hessian``) on ``x_curvature``;
    ``config`` gives the damping, the solver and the precision (``OverlapConfig()``: the
    defaults). Stops when every right-hand side's quadratic form ``b^T chi b`` is certified
    (hence every pair on the Cauchy-Schwarz scale). Returns a ``solvers.ChiSolution`` (its
    arrays in that precision).
    """
    config = checked(config, OverlapConfig)
    with computing_in(config.precision) as dtype:
        op = GaussNewtonBlocks(apply_fn, cast(params, dtype), jnp.asarray(x_curvature, dtype), sigma,
                               damping=config.damping, output_hessian=output_hessian,
                               vectors_per_product=config.product_chunk)
        return config.chi_solver().solve(op, jnp.asarray(rhs, dtype), Targets(config.rtol))


def plan_chunks(n_samples: int, n_elements: int, reused: Sequence[bool], solver: str, rhs_chunk: int | None):
    """Elements per right-hand-side chunk; the v's always go with chunk 0.

    The block solver puts as many elements as ``rhs_chunk_size`` columns allow into each
    chunk (all of them by default: one shared Krylov space); chunk 0 may hold the v's alone. The baseline CG keeps its own
    shape: the v's alone, then one element per chunk (its u-solves need the v-solutions).
    Elements that reuse the v-solves cost no columns and ride in chunk 0.
    """
    free = [k for k in range(n_elements) if reused[k]]
    paid = [k for k in range(n_elements) if not reused[k]]
    if solver == "cg":
        return [free] + [[k] for k in paid]
    budget = math.inf if not rhs_chunk else max(int(rhs_chunk), n_samples)
    chunks, current, cols = [], list(free), n_samples  # chunk 0 starts with the v's
    for k in paid:
        if cols + n_samples > budget and (current or chunks):
            chunks.append(current)
            current, cols = [], 0
        current.append(k)
        cols += n_samples
    chunks.append(current)
    return chunks


# The block solver holds about this many (k, P) arrays for k right-hand sides (right-hand
# sides, iterates, search blocks, three Lanczos blocks, residuals); half the device memory
# goes to them, a quarter to the stored basis (solvers._block.default_basis_bytes).
WORKSPACE_ARRAYS = 8


def default_rhs_chunk(n_params: int, dtype, n_samples: int, n_columns: int) -> int | None:
    """None (one chunk) when every right-hand side fits half the device memory, else the
    columns that do (at least N): memory is bounded by chunks, not by the problem."""
    per_column = WORKSPACE_ARRAYS * n_params * np.dtype(dtype).itemsize
    fits = int(device_memory_bytes() // 2 // per_column)
    return None if fits >= n_columns else max(fits, n_samples)


class _Progress:
    """One bar per chunk: certified accuracy reached, Gauss-Newton products, ETA."""

    def __init__(self, enabled: bool, desc: str):
        self.enabled, self.desc, self.bar, self.first = enabled, desc, None, None

    def __call__(self, step, products, worst):
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=100, desc=self.desc, unit="%", bar_format=(
                "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}"))
        if np.isfinite(worst) and worst > 0:
            self.first = self.first or max(worst, 1.0 + 1e-9)
            done = 100.0 * (1.0 - math.log(max(worst, 1.0)) / math.log(self.first))
            self.bar.update(max(0.0, done - self.bar.n))
        self.bar.set_postfix_str(f"step {step}, {products} products, worst bound {worst:.3g} x target")

    def close(self):
        if self.bar is not None:
            self.bar.update(100 - self.bar.n)
            self.bar.close()


def _v_side(v, sol, v_cols):
    """What every element needs of the v-solves (numpy, float64)."""
    pick = lambda a: np.asarray(a)[v_cols]  # noqa: E731
    gram = sol.gram[np.ix_(v_cols, v_cols)]
    rounding = sol.form_rounding[np.ix_(v_cols, v_cols)]
    return {
        "grad_norm_v": np.sqrt(np.diagonal(euclidean_gram(v, v))),
        "gram_vv": gram, "chi_vv": np.diagonal(gram).copy(),
        "form_rounding_vv": rounding, "chi_vv_rounding": np.diagonal(rounding).copy(),
        "residual_slack_v": pick(sol.residual_slack),
        "error_bound_v": pick(sol.error_bound), "residual_bound_v": pick(sol.residual_bound),
        "residual_norm_v": pick(sol.residual_norm), "iterations_v": pick(sol.iterations),
        "converged_v": pick(sol.converged), "null_space_share_v": pick(sol.null_share),
    }


def _reused_element(v_side):
    return {
        "overlap_matrix_chi": v_side["gram_vv"], "chi_uu": v_side["chi_vv"],
        "overlap_matrix_chi_rounding": v_side["form_rounding_vv"], "chi_uu_rounding": v_side["chi_vv_rounding"],
        "error_bound_u": v_side["error_bound_v"], "residual_bound_u": v_side["residual_bound_v"],
        "residual_norm_u": v_side["residual_norm_v"], "iterations_u": v_side["iterations_v"],
        "converged_u": v_side["converged_v"], "null_space_share_u": v_side["null_space_share_v"],
    }


def _chunk_columns(n, elements, reused, has_v):
    """The chunk's column layout: v columns (or None) and each paid element's u columns."""
    v_cols = list(range(n)) if has_v else None
    col, element_cols = (n if has_v else 0), {}
    for k in elements:
        if not reused[k]:
            element_cols[k] = list(range(col, col + n))
            col += n
    return v_cols, element_cols, col


def _chunk_targets(rtol, us, elements, reused, v_cols, element_cols, v_side, w_v, damping, more_chunks):
    """What a chunk must certify: its own v's, or the v side an earlier chunk fixed."""
    if v_cols is not None:
        rule_elements = {**element_cols, **{k: v_cols for k in elements if reused[k]}}
        return Targets(rtol, tuple(v_cols), rule_elements, None, more_chunks)
    solved_v = certify.SolvedV(v_side["chi_vv"], v_side["error_bound_v"],
                               {k: np.asarray(us[k] @ w_v.T, np.float64) for k in element_cols},
                               np.sqrt(v_side["residual_bound_v"] * damping))
    return Targets(rtol, None, element_cols, solved_v, False)


def _element_values(sol, cols, m, m_rounding):
    pick = lambda a: np.asarray(a)[cols]  # noqa: E731
    return dict(overlap_matrix_chi=m, chi_uu=np.diagonal(sol.gram)[cols].copy(),
                overlap_matrix_chi_rounding=m_rounding,
                chi_uu_rounding=np.diagonal(sol.form_rounding)[cols].copy(),
                error_bound_u=pick(sol.error_bound), residual_bound_u=pick(sol.residual_bound),
                residual_norm_u=pick(sol.residual_norm), iterations_u=pick(sol.iterations),
                converged_u=pick(sol.converged), null_space_share_u=pick(sol.null_share))


def _solve_chunk(chi_solver: ChiSolver, op, v, us, elements, reused, has_v, v_side, w_v, r_v, results, *, rtol,
                 more_chunks, progress, desc):
    """Solve one chunk's right-hand sides and add its chi values to ``results`` (in place).

    Returns ``((v_side, (w, r_v)) or None, log entry)``.
    """
    n = int(v.shape[0])
    v_cols, element_cols, col = _chunk_columns(n, elements, reused, has_v)
    targets = _chunk_targets(rtol, us, elements, reused, v_cols, element_cols, v_side, w_v, op.damping,
                             more_chunks)
    blocks = ([v] if has_v else []) + [us[k] for k in element_cols]
    bar = _Progress(progress, f"{desc} ({col} right-hand sides)")
    t0 = time.perf_counter()
    try:
        sol = chi_solver.solve(op, jnp.concatenate(blocks), targets, progress=bar)
    finally:
        bar.close()
    log = {"right_hand_sides": int(col), "ggn_products": int(sol.ggn_products), "result": sol.result.value,
           "seconds": round(time.perf_counter() - t0, 3), **sol.stats}
    new_v = None
    if has_v:
        v_side = _v_side(v, sol, v_cols)
        w_v, r_v = sol.solution[:n], sol.residual[:n]
        new_v = (v_side, (w_v, r_v))
    for k in elements:
        if reused[k]:
            results[k].update(_reused_element(v_side))
            continue
        cols = element_cols[k]
        if has_v:
            m, m_rounding = sol.gram[np.ix_(cols, v_cols)], sol.form_rounding[np.ix_(cols, v_cols)]
        else:
            z = sol.solution[cols[0]:cols[-1] + 1]
            m, m_rounding = corrected_cross(us[k], z, r_v, w_v)
            m_rounding = m_rounding + np.outer(row_norms(z), v_side["residual_slack_v"])  # z_i . (r_vj - fl(r_vj))
        results[k].update(_element_values(sol, cols, m, m_rounding))
    return new_v, log


def solve_overlaps(operator, v, gradients_of: Callable, reused: Sequence[bool], element_names: Sequence[str], *,
                   solver: ChiSolver | None, rtol: float, rhs_chunk: int | None = None,
                   partials: store.Partials | None = None, stop_after: int | None = None, progress: bool = False):
    """The overlaps of given gradients: ``v`` (N, P) and ``gradients_of(k)`` = ``u^g`` of element k.

    ``operator`` is a ``solvers.ChiOperator`` applying ``lambda I + G`` to blocks
    (``ggn.GaussNewtonBlocks``, or any object with its interface) and ``solver`` the chi
    solver; both None compute the Euclidean overlaps only. ``reused[k]``: element k's
    gradients equal ``v`` bit for bit. Returns ``(results by element, v side, chunk log,
    number of chunks)`` for ``store.build_result_dataset``.
    """
    want_chi = operator is not None
    n, n_el = int(v.shape[0]), len(element_names)
    plan = plan_chunks(n, n_el, reused, solver.name, rhs_chunk) if want_chi else [list(range(n_el))]
    results: dict[int, dict] = {}
    chunks_log: list[dict] = []
    v_side = w_v = r_v = None
    computed = 0
    for c, elements in enumerate(plan):
        saved = partials.load_chunk(c) if partials is not None else None
        if saved is not None:
            done, saved_v, log = saved
            results.update(done)
            chunks_log.append(log)
            if saved_v is not None:
                v_side = {k: a for k, a in saved_v.items() if k not in ("w", "r_v")}
                if "w" in saved_v:
                    w_v, r_v = (jnp.asarray(saved_v[k], operator.dtype) for k in ("w", "r_v"))
            continue
        if stop_after is not None and computed >= stop_after:
            raise OverlapInterrupted(f"stopped after {computed} new chunks")
        if preemption.requested():  # SIGTERM: the finished chunks are saved, stop before the next
            raise OverlapInterrupted(f"pre-empted (SIGTERM) after {c} of {len(plan)} chunks")
        us = {k: (v if reused[k] else gradients_of(k)) for k in elements}
        new = {k: {"overlap_matrix_euclidean": euclidean_gram(us[k], v),
                   "grad_norm_u": np.sqrt(np.diagonal(euclidean_gram(us[k], us[k]))),
                   "reused_v_solves": np.asarray(reused[k]), "chunk": np.asarray(c)} for k in elements}
        has_v = want_chi and c == 0
        log = {"chunk": c, "elements": [element_names[k] for k in elements]}
        if want_chi:
            new_v, log_solve = _solve_chunk(solver, operator, v, us, elements, reused, has_v, v_side, w_v, r_v,
                                            new, rtol=rtol, more_chunks=len(plan) > 1, progress=progress,
                                            desc=f"chi solve {c + 1}/{len(plan)}")
            log.update(log_solve)
            if has_v:
                v_side, (w_v, r_v) = new_v
        results.update(new)
        chunks_log.append(log)
        if partials is not None:
            keep_v = None
            if has_v:
                keep_v = dict(v_side, **({"w": np.asarray(w_v), "r_v": np.asarray(r_v)} if len(plan) > 1 else {}))
            partials.save_chunk(c, new, keep_v, log)
        computed += 1
    if not want_chi:
        v_side = {"grad_norm_v": np.sqrt(np.diagonal(euclidean_gram(v, v)))}
    return results, v_side, chunks_log, len(plan)


def compute_overlaps(apply_fn: Callable, params, x, y, sigma, group: Group, config: OverlapConfig | None = None, *,
                     loss_fn: Callable | None = None, output_hessian: Callable | None = None, sample_ids=None,
                     partial_dir=None, progress: bool = False, stop_after: int | None = None,
                     attrs: dict | None = None):
    """Gradient overlaps of the transitions ``(x_i, y_i)`` across the orbits of ``group``.

    ``config`` (``OverlapConfig()``: the defaults) says what to compute and how: the metric,
    the damping lambda and rtol of every chi value, the solver, the curvature batch (the
    first ``curvature_samples`` of x), chunk sizes and the precision; it was checked when
    it was made. ``loss_fn(pred, target)`` replaces SMSE (a custom loss needs its
    ``output_hessian`` for the chi metric, which must be positive semi-definite: every bound
    uses ``lambda_min(A) >= lambda``). ``sample_ids`` label the samples (default 0..N-1);
    ``attrs`` are added to the result's provenance.

    With ``partial_dir``, the probe, the v-solves and each finished element are saved and
    a rerun with the same inputs resumes. ``stop_after=k`` raises ``OverlapInterrupted``
    after k newly solved chunks. Returns the dataset of docs/overlap.md section 6.
    """
    config = checked(config, OverlapConfig)
    if loss_fn is not None and config.wants_chi and output_hessian is None:
        raise SymgradError("a custom loss_fn needs its output_hessian for the chi metric")
    with computing_in(config.precision) as dtype:
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        if x.shape != y.shape or x.ndim != 4:
            raise SymgradError(f"x and y must both be (n, nx, ny, c), got {x.shape} and {y.shape}")
        return _compute(apply_fn, cast(params, dtype), x, y, None if sigma is None else jnp.asarray(sigma, dtype),
                        group, config, dtype=dtype, loss_fn=loss_fn, output_hessian=output_hessian,
                        sample_ids=sample_ids, partial_dir=partial_dir, progress=progress, stop_after=stop_after,
                        attrs=attrs)


def _settings(config: OverlapConfig, *, n_params, dtype, x_curv, rhs_chunk, solver, loss_fn, output_hessian) -> dict:
    """The result's provenance of how it was computed: the config, and what it resolved to."""
    name_of = lambda f, default: default if f is None else getattr(f, "__qualname__", type(f).__name__)  # noqa: E731
    return dict(config.to_dict(), settings_class=type(config).__name__, rhs_chunk=rhs_chunk,
                safety=getattr(solver, "safety", None), n_params=n_params, dtype=str(np.dtype(dtype)),
                curvature_batch_size=int(x_curv.shape[0]), loss=name_of(loss_fn, "smse"),
                output_hessian=name_of(output_hessian, "smse"))


def _spectrum(op, config: OverlapConfig, partials, x_curv, n_params, progress):
    """The spectrum probe stored with the result (resumed from the partials), and its forecast."""
    spectrum = partials.load_json("spectrum") if partials is not None else None
    if spectrum is None and config.probe_vectors > 0:
        spectrum = probe_spectrum(op.with_damping(0.0), n_vectors=config.probe_vectors, steps=config.probe_steps,
                                  basis_bytes=config.basis_bytes, rank_bound=min(n_params, int(np.prod(x_curv.shape))))
        if partials is not None:
            partials.save_json("spectrum", spectrum)
    if spectrum is not None and progress:
        lo, hi = predicted_products(spectrum, config.damping)
        print(f"spectrum probe: largest eigenvalue {spectrum['top_eigenvalues'][0]:.3g}, d_eff({config.damping:g}) in "
              f"[{lo / KRYLOV_PER_DEFF:.0f}, {hi / KRYLOV_PER_DEFF:.0f}]: expect about {lo:.0f} to {hi:.0f} "
              "Gauss-Newton products", flush=True)
    return spectrum


def _compute(apply_fn, params, x, y, sigma, group, config: OverlapConfig, *, dtype, loss_fn, output_hessian,
             sample_ids, partial_dir, progress, stop_after, attrs):
    flat, _ = ravel_pytree(params)
    n_params, n = int(flat.shape[0]), int(x.shape[0])
    x_curv = x[:config.curvature_samples] if config.curvature_samples else x
    if config.curvature_samples and config.curvature_samples > n:
        raise SymgradError(f"curvature_samples {config.curvature_samples} exceeds the {n} samples given")
    # An element that leaves the inputs unchanged bit for bit (the identity) has u == v bit for
    # bit: it reuses the v-solves. Decided on the inputs, so planning needs no gradients.
    acted = [(group.act(g, x), group.act(g, y)) for g in group.elements]
    reused = [bool(jnp.array_equal(gx, x) and jnp.array_equal(gy, y)) for gx, gy in acted]
    solver = config.chi_solver() if config.wants_chi else None
    rhs_chunk = config.rhs_chunk
    if config.wants_chi and rhs_chunk is None:
        rhs_chunk = default_rhs_chunk(n_params, dtype, n, n * (1 + sum(not r for r in reused)))
    settings = _settings(config, n_params=n_params, dtype=dtype, x_curv=x_curv, rhs_chunk=rhs_chunk, solver=solver,
                         loss_fn=loss_fn, output_hessian=output_hessian)
    partials = None
    if partial_dir is not None:
        key = dict(settings, group=group.name, elements=list(group.elements))
        partials = store.Partials(partial_dir, store.fingerprint([flat, x, y, sigma, x_curv], key))

    grads = lambda xs, ys: per_example_gradients(  # noqa: E731
        apply_fn, params, xs, ys, sigma, loss_fn=loss_fn, chunk_size=config.grad_chunk)
    v = grads(x, y)
    op = spectrum = None
    if config.wants_chi:
        op = GaussNewtonBlocks(apply_fn, params, x_curv, sigma, damping=config.damping, output_hessian=output_hessian,
                               vectors_per_product=config.product_chunk)
        settings["operator_rounding"] = op.rounding()  # every bound adds it (certify); not a chunk's cost
        settings["operator_rounding_ggn_products"] = int(op.products)
        spectrum = _spectrum(op, config, partials, x_curv, n_params, progress)
    results, v_side, chunks_log, n_chunks = solve_overlaps(
        op, v, lambda k: grads(*acted[k]), reused, [str(e) for e in group.elements], solver=solver, rtol=config.rtol,
        rhs_chunk=rhs_chunk, partials=partials, stop_after=stop_after, progress=progress)
    settings["rhs_chunks"] = n_chunks
    return store.build_result_dataset(
        group, [results[k] for k in range(len(group))], v_side, metric=config.metric, rtol=config.rtol,
        sample_ids=sample_ids if sample_ids is not None else np.arange(n), settings=settings,
        spectrum=spectrum, chunks=chunks_log, attrs=attrs)
