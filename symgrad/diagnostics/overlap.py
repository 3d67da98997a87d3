"""Gradient overlaps across group orbits in the Euclidean and chi metrics: orchestration only.

For transitions ``(x_i, y_i)`` and a group element ``g``::

    u_i^g = grad L(g.x_i, g'.y_i),  v_j = grad L(x_j, y_j),  chi = (lambda I + G)^-1
    M^g_ij = <u_i^g, v_j>_chi  and  u_i^g . v_j
    overlap_frobenius = M^g_ii / ||M^g||_F,   overlap_cosine = M^g_ii / sqrt(<u,u>_chi <v,v>_chi)

with ``g'`` the element's action on targets (``Group.target``): ``g`` itself, except for a
Galilean boost, whose target one step later is boosted and shifted, ``T_{c dt} B_c y``.

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

import json
import math
import time
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from symgrad import preemption
from symgrad.diagnostics import certify, store
from symgrad.diagnostics.config import OverlapConfig, checked
from symgrad.diagnostics._rows import bucket
from symgrad.diagnostics.forecast import Forecast, Pilot, time_products
from symgrad.diagnostics.ggn import GaussNewtonBlocks
from symgrad.diagnostics.gradients import per_example_gradients
from symgrad.diagnostics.plan import Chunk, Devices, MemoryPlan, PlanError, host_rss, layout, plan_overlap
from symgrad.diagnostics.precision import cast, computing_in
from symgrad.diagnostics.solvers import ChiSolver, Targets, corrected_cross, corrected_gram, euclidean_gram
from symgrad.diagnostics.solvers._base import device_block, host_rows, row_norms
from symgrad.diagnostics.solvers._deflation import Recycle
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


class _Progress:
    """One bar per chunk: certified accuracy reached, Gauss-Newton products, ETA."""

    def __init__(self, enabled: bool, desc: str, pilot=None):
        self.enabled, self.desc, self.bar, self.first = enabled, desc, None, None
        self.pilot = pilot  # (forecast.Pilot, called with its prediction once made) or None

    def __call__(self, step, products, worst):
        if preemption.requested():  # SIGTERM: stop within one solver step, the finished chunks kept
            raise OverlapInterrupted("pre-empted (SIGTERM) during a chi solve; the chunks finished before it are kept")
        if self.pilot is not None and self.pilot[0].observe(step, products, worst):
            self.pilot[1](self.pilot[0])
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


# The per-column results of the v-solves, kept for the v side (``_v_side``).
_V_COLUMN_STATS = ("error_bound", "residual_bound", "residual_norm", "residual_slack", "iterations", "converged",
                   "null_share")


def _v_part(op, sol, cols, rows) -> dict:
    """What a chunk's v-solves leave for the v side: their rows, solutions, residuals and stats."""
    sl = slice(cols[0], cols[-1] + 1)  # to the host: the orchestration's (N, P) arrays live there
    part = {"rows": np.asarray(rows), "w": host_rows(op, sol.solution[sl]), "r": host_rows(op, sol.residual[sl])}
    part.update({name: np.asarray(getattr(sol, name))[cols] for name in _V_COLUMN_STATS})
    return part


def _v_side(v, parts: list[dict]):
    """What every element needs of the v-solves (numpy, float64), from the chunks that solved them.

    The corrected Gram matrix of the v's is formed here from their solutions and residuals,
    as ``solvers._base.finish`` forms it within a chunk (the same values when one chunk
    solved them all), with the same rounding bound. Returns ``(v side, w_v, r_v)``.
    """
    parts = sorted(parts, key=lambda p: int(p["rows"][0]))
    joined = {name: np.concatenate([p[name] for p in parts]) for name in _V_COLUMN_STATS}
    w_v = parts[0]["w"] if len(parts) == 1 else np.concatenate([p["w"] for p in parts])
    r_v = parts[0]["r"] if len(parts) == 1 else np.concatenate([p["r"] for p in parts])
    gram, rounding = corrected_gram(v, w_v, r_v)
    first_order = np.outer(row_norms(w_v), joined["residual_slack"])  # w_i . (r_j - fl(r_j))
    rounding = rounding + 0.5 * (first_order + first_order.T)
    side = {
        "grad_norm_v": np.sqrt(np.diagonal(euclidean_gram(v, v))),
        "gram_vv": gram, "chi_vv": np.diagonal(gram).copy(),
        "form_rounding_vv": rounding, "chi_vv_rounding": np.diagonal(rounding).copy(),
        "residual_slack_v": joined["residual_slack"],
        "error_bound_v": joined["error_bound"], "residual_bound_v": joined["residual_bound"],
        "residual_norm_v": joined["residual_norm"], "iterations_v": joined["iterations"],
        "converged_v": joined["converged"], "null_space_share_v": joined["null_share"],
    }
    return side, w_v, r_v


def _reused_element(v_side):
    return {
        "overlap_matrix_chi": v_side["gram_vv"], "chi_uu": v_side["chi_vv"],
        "overlap_matrix_chi_rounding": v_side["form_rounding_vv"], "chi_uu_rounding": v_side["chi_vv_rounding"],
        "error_bound_u": v_side["error_bound_v"], "residual_bound_u": v_side["residual_bound_v"],
        "residual_norm_u": v_side["residual_norm_v"], "iterations_u": v_side["iterations_v"],
        "converged_u": v_side["converged_v"], "null_space_share_u": v_side["null_space_share_v"],
    }


def _columns(chunk: Chunk, n: int):
    """The chunk's column layout: the v rows' columns (or None) and each part's u columns."""
    v_cols = list(range(len(chunk.v_rows))) or None
    col, part_cols = len(chunk.v_rows), []
    for _, rows in chunk.parts:
        part_cols.append(list(range(col, col + len(rows))))
        col += len(rows)
    return v_cols, part_cols, col


def _targets(rtol, chunk: Chunk, n, us, v_cols, part_cols, v_side, w_v, damping, more_chunks):
    """What a chunk must certify: its own v's (with the elements beside them when it holds all
    of them), or the elements' rows against the v side earlier chunks fixed."""
    if v_cols is not None:
        if len(chunk.v_rows) < n:  # a share of the v's, for elements solved later
            return Targets(rtol, tuple(v_cols), {}, None, True)
        elements = {k: cols for (k, _), cols in zip(chunk.parts, part_cols)}
        elements.update({k: v_cols for k in chunk.free})
        return Targets(rtol, tuple(v_cols), elements, None, more_chunks)
    cross = {k: np.asarray(us[k] @ w_v.T, np.float64) for k, _ in chunk.parts}
    solved_v = certify.SolvedV(v_side["chi_vv"], v_side["error_bound_v"], cross,
                               np.sqrt(v_side["residual_bound_v"] * damping))
    rows = {k: tuple(r) for k, r in chunk.parts if len(r) < n}
    return Targets(rtol, None, {k: cols for (k, _), cols in zip(chunk.parts, part_cols)}, solved_v, False, rows)


def _element_values(sol, cols, m, m_rounding):
    pick = lambda a: np.asarray(a)[cols]  # noqa: E731
    return dict(overlap_matrix_chi=m, chi_uu=np.diagonal(sol.gram)[cols].copy(),
                overlap_matrix_chi_rounding=m_rounding,
                chi_uu_rounding=np.diagonal(sol.form_rounding)[cols].copy(),
                error_bound_u=pick(sol.error_bound), residual_bound_u=pick(sol.residual_bound),
                residual_norm_u=pick(sol.residual_norm), iterations_u=pick(sol.iterations),
                converged_u=pick(sol.converged), null_space_share_u=pick(sol.null_share))


def _put_rows(result: dict, rows, values: dict, n: int) -> None:
    """Write an element's values for ``rows`` into its (N, ...) arrays (made on first use)."""
    rows = np.asarray(rows)
    for name, value in values.items():
        value = np.asarray(value)
        if name not in result:
            fill = False if value.dtype == bool else (0 if value.dtype.kind in "iu" else np.nan)
            result[name] = np.full((n,) + value.shape[1:], fill, value.dtype)
        result[name][rows] = value


def _solve_chunk(chi_solver: ChiSolver, op, v, us, chunk: Chunk, v_side, w_v, r_v, *, rtol, more_chunks, progress,
                 desc, deflation=None, recycle=None, pilot=None):
    """Solve one chunk's right-hand sides (``recycle``: a ``Recycle`` that keeps its Lanczos
    vectors and their products).

    Returns ``(v part or None, {element: (rows, values)}, log entry)``; the values of a
    chunk that holds every v are read from its own Gram matrix, the others' from the
    corrected cross forms against the v side.
    """
    n = int(v.shape[0])
    v_cols, part_cols, col = _columns(chunk, n)
    targets = _targets(rtol, chunk, n, us, v_cols, part_cols, v_side, w_v, op.damping, more_chunks)
    blocks = ([v[np.asarray(chunk.v_rows)] if len(chunk.v_rows) < n else v] if v_cols else [])
    blocks += [us[k] if len(rows) == n else us[k][np.asarray(rows)] for k, rows in chunk.parts]
    rhs = device_block(op, np.concatenate(blocks) if len(blocks) > 1 else blocks[0])
    del blocks
    bar = _Progress(progress, f"{desc} ({col} right-hand sides)", pilot)
    t0 = time.perf_counter()
    try:
        extra = {name: value for name, value in (("deflation", deflation), ("recycle", recycle)) if value is not None}
        sol = chi_solver.solve(op, rhs, targets, progress=bar, **extra)
    finally:
        bar.close()
    del rhs
    log = {"right_hand_sides": int(col), "ggn_products": int(sol.ggn_products), "result": sol.result.value,
           "seconds": round(time.perf_counter() - t0, 3), **sol.stats}
    v_part = _v_part(op, sol, v_cols, chunk.v_rows) if v_cols else None
    values = {}
    for (k, rows), cols in zip(chunk.parts, part_cols):
        if v_cols is not None:  # every v is in this chunk
            m, m_rounding = sol.gram[np.ix_(cols, v_cols)], sol.form_rounding[np.ix_(cols, v_cols)]
        else:
            z = host_rows(op, sol.solution[cols[0]:cols[-1] + 1])
            u = us[k] if len(rows) == n else us[k][np.asarray(rows)]
            m, m_rounding = corrected_cross(u, z, r_v, w_v)
            m_rounding = m_rounding + np.outer(row_norms(z), v_side["residual_slack_v"])  # z_i . (r_vj - fl(r_vj))
        values[k] = (rows, _element_values(sol, cols, m, m_rounding))
    return v_part, values, log


class _Gradients:
    """The gradients of the elements a chunk needs, the latest element's kept for the next
    chunk (an element split across chunks is differentiated once)."""

    def __init__(self, v, gradients_of, reused):
        self.v, self.gradients_of, self.reused, self.kept = v, gradients_of, reused, {}

    def __call__(self, elements):
        self.kept = {k: (self.v if self.reused[k] else self.kept.get(k)) for k in elements}
        for k, u in self.kept.items():
            if u is None:
                self.kept[k] = np.asarray(self.gradients_of(k))
        return dict(self.kept)


def _space(op, keep: Recycle, progress: bool, log: dict):
    """The deflation space from what chunk 0 kept (``Recycle.space``), its rounding estimated
    (products counted in ``log``); None when no Ritz vector clears the floor."""
    before, t0 = op.products, time.perf_counter()
    deflation, theta = keep.space(op)
    if deflation is not None:
        deflation.rounding()
    log.update(recycled_vectors=0 if deflation is None else int(deflation.k),
               recycled_smallest_ritz_value=float(np.min(theta)) if len(theta) else None,
               deflation_ggn_products=int(op.products - before))
    if progress:
        said = ("none clears the floor: the later chunks run undeflated" if deflation is None else
                f"{deflation.k} Ritz vectors (A's, {np.min(theta):.3g} to {np.max(theta):.3g}) deflate the chunks after it")
        print(f"chunk 0's Lanczos vectors recycled: {said} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return deflation


def _recycled(solver, op, v, us, chunk: Chunk, vectors: int, *, rtol, progress, log):
    """A resumed run's deflation space: chunk 0 solved again (its values are saved already);
    its products are the space's, in ``log``."""
    before = op.products
    keep = Recycle(vectors)
    _solve_chunk(solver, op, v, us, chunk, None, None, None, rtol=rtol, more_chunks=True, progress=progress,
                 desc="chunk 0 again, for its Lanczos vectors", recycle=keep)
    deflation = _space(op, keep, progress, log)
    log.update(deflation_ggn_products=int(op.products - before), recycled_again=True)
    return deflation


def solve_overlaps(operator, v, gradients_of: Callable, reused: Sequence[bool], element_names: Sequence[str], *,
                   solver: ChiSolver | None, rtol: float, chunks: Sequence[Chunk] | None = None,
                   partials: store.Partials | None = None, stop_after: int | None = None, progress: bool = False,
                   forecast: Forecast | None = None, recycle_vectors: int = 0):
    """The overlaps of given gradients: ``v`` (N, P) and ``gradients_of(k)`` = ``u^g`` of element k.

    ``operator`` is a ``solvers.ChiOperator`` applying ``lambda I + G`` to blocks
    (``ggn.GaussNewtonBlocks``, or any object with its interface) and ``solver`` the chi
    solver; both None compute the Euclidean overlaps only. ``reused[k]``: element k's
    gradients equal ``v`` bit for bit. ``chunks``: the right-hand-side chunks
    (``plan.layout``; None: one). ``forecast`` (``forecast.Forecast``) is refined after every
    chunk from the products spent so far, printed with ``progress`` and kept in the chunk
    log. ``recycle_vectors`` (block solver, more than one chunk): chunk 0 keeps that many of
    its Lanczos vectors and their products, and their Ritz vectors deflate every later chunk
    (``solvers._deflation``; a run resumed after chunk 0 solves chunk 0 again for them).
    Returns ``(results by element, v side, chunk log, number of chunks)`` for
    ``store.build_result_dataset``.
    """
    want_chi = operator is not None
    v = np.asarray(v)  # the orchestration's (N, P) arrays live on the host; a chunk's block moves to the device
    n, n_el = int(v.shape[0]), len(element_names)
    if not want_chi:
        chunks = [Chunk((), tuple((k, tuple(range(n))) for k in range(n_el)))]
    elif chunks is None:
        chunks = layout(n, reused, solver.name, None)
    results: dict[int, dict] = {k: {} for k in range(n_el)}
    chunks_log: list[dict] = []
    v_parts: list[dict] = []
    v_side = w_v = r_v = None
    gradients = _Gradients(v, gradients_of, reused)
    computed = 0
    if want_chi and forecast is None:
        forecast = Forecast.unknown([c.columns for c in chunks])
    recycling = bool(recycle_vectors) and want_chi and len(chunks) > 1 and solver.name == "block"
    if recycling:  # chunk 0 runs undeflated with its basis kept: the later chunks are forecast apart
        forecast = forecast.with_first_apart()
    spent, said, deflation, pilots = {}, {}, None, []

    def pilot_said(index):  # the forecast from chunk index's pilot, printed and kept in its log
        def said_by(pilot):
            later = pilot.deflated_chunk() if recycling and index == 0 else None
            said.update(pilot=Forecast.from_pilot([c.columns for c in chunks], pilot.prediction,
                                                  forecast.seconds_per_product, chunk=index, spent=spent, later=later),
                        at=pilot.at, chunk=index)
            if progress:
                from tqdm.auto import tqdm

                tqdm.write(f"pilot (first {pilot.at:,} products of chunk {index}): {said['pilot'].describe()}")
        return said_by

    for c, chunk in enumerate(chunks):
        saved = partials.load_chunk(c) if partials is not None else None
        if saved is not None:
            new, v_part, log = saved
        else:
            if stop_after is not None and computed >= stop_after:
                raise OverlapInterrupted(f"stopped after {computed} new chunks")
            if preemption.requested():  # SIGTERM: the finished chunks are saved, stop before the next
                raise OverlapInterrupted(f"pre-empted (SIGTERM) after {c} of {len(chunks)} chunks")
            log = {"chunk": c, "elements": [element_names[k] for k in chunk.elements]}
            if recycling and c > 0 and deflation is None:  # resumed after chunk 0: its space again
                deflation = _recycled(solver, operator, v, gradients(chunks[0].elements), chunks[0], recycle_vectors,
                                      rtol=rtol, progress=progress, log=log)
            us = gradients(chunk.elements)
            new = {k: {"overlap_matrix_euclidean": euclidean_gram(us[k], v),
                       "grad_norm_u": np.sqrt(np.diagonal(euclidean_gram(us[k], us[k]))),
                       "reused_v_solves": np.asarray(reused[k]), "chunk": np.asarray(c)}
                   for k in chunk.elements if "overlap_matrix_euclidean" not in results[k]}
            v_part = None
            if want_chi:
                keep = Recycle(recycle_vectors) if recycling and c == 0 else None
                piloted = c == 0 or (recycling and c == 1)  # the first chunk of each kind
                if piloted:
                    pilots.append(Pilot())
                v_part, values, log_solve = _solve_chunk(
                    solver, operator, v, us, chunk, v_side, w_v, r_v, rtol=rtol, more_chunks=len(chunks) > 1,
                    progress=progress, desc=f"chi solve {c + 1}/{len(chunks)}", deflation=deflation, recycle=keep,
                    pilot=(pilots[-1], pilot_said(c)) if piloted else None)
                log.update(log_solve)
                if keep is not None:
                    deflation = _space(operator, keep, progress, log)
                if said.get("chunk") == c:
                    log.update(forecast_pilot_products=round(said["pilot"].total, 1), forecast_pilot_at_products=said["at"])
                for k, (rows, vals) in values.items():
                    new.setdefault(k, {}).update(rows=np.asarray(rows), **vals)
            if partials is not None:
                partials.save_chunk(c, new, None if v_part is None else {a: np.asarray(b) for a, b in v_part.items()},
                                    log)
            computed += 1
        _merge(results, new, n)
        chunks_log.append(log)
        if not want_chi:
            continue
        spent[c] = int(log["ggn_products"])
        forecast = forecast.after(c, spent, later=pilots[0].deflated_chunk() if recycling and pilots else None)
        log["forecast_remaining_products"] = round(forecast.remaining, 1)
        if progress and saved is None and c + 1 < len(chunks):
            print(f"chunk {c}: {spent[c]:,} products; {forecast.describe()}", flush=True)
        if v_part is not None:
            v_parts.append(v_part)
        if v_side is None and sum(len(p["rows"]) for p in v_parts) == n:  # every v solved: the v side
            v_side, w_v, r_v = _v_side(v, v_parts)
            for k in chunk.free:
                results[k].update(_reused_element(v_side))
    if not want_chi:
        v_side = {"grad_norm_v": np.sqrt(np.diagonal(euclidean_gram(v, v)))}
    return results, v_side, chunks_log, len(chunks)


def _merge(results: dict, new: dict, n: int) -> None:
    """Add a chunk's values to ``results``: rows of an element where the chunk says which."""
    for k, value in new.items():
        value = dict(value)
        rows = value.pop("rows", np.arange(n))
        _put_rows(results[k], rows, {a: b for a, b in value.items() if a in _ROW_VALUES}, n)
        results[k].update({a: b for a, b in value.items() if a not in _ROW_VALUES})


# The values a chunk computes for some rows of an element (the rest are whole-element values).
_ROW_VALUES = ("overlap_matrix_chi", "chi_uu", "overlap_matrix_chi_rounding", "chi_uu_rounding", "error_bound_u",
               "residual_bound_u", "residual_norm_u", "iterations_u", "converged_u", "null_space_share_u")


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


def _name_of(f, default):
    return default if f is None else getattr(f, "__qualname__", type(f).__name__)


def _settings(config: OverlapConfig, *, n_params, dtype, x_curv, plan, solver, loss_fn, output_hessian) -> dict:
    """The result's provenance of how it was computed: the config, and what it resolved to."""
    out = dict(config.to_dict(), settings_class=type(config).__name__, safety=getattr(solver, "safety", None),
               n_params=n_params, dtype=str(np.dtype(dtype)), curvature_batch_size=int(x_curv.shape[0]),
               loss=_name_of(loss_fn, "smse"), output_hessian=_name_of(output_hessian, "smse"))
    if plan is not None:
        out.update(rhs_chunk=plan.columns, product_chunk=plan.product_chunk, basis_bytes=plan.basis_bytes,
                   memory_plan=json.dumps(plan.to_dict()))
    return out


def _mesh(config: OverlapConfig, curvature_batch: int):
    """The devices the curvature batch is sharded over: ``config.devices`` of them, or as many
    of this process's as divide the batch; None for one."""
    import jax

    available = jax.devices()
    if config.devices is not None and config.devices > len(available):
        raise SymgradError(f"{config.devices} devices asked for, {len(available)} here; lower --devices "
                           "(or use --plan with --device-memory to plan for devices that are not here)")
    count = config.devices or max(d for d in range(1, len(available) + 1) if curvature_batch % d == 0)
    if curvature_batch % count:
        raise PlanError(f"the curvature batch of {curvature_batch} samples does not split over {count} devices; "
                        f"set --curvature-samples to a multiple of {count}, or use fewer --devices")
    if count == 1:
        return None
    # Auto axes: XLA propagates the shardings of the inputs through the solvers' kernels
    return jax.make_mesh((count,), ("devices",), devices=available[:count], axis_types=(jax.sharding.AxisType.Auto,))


def plan_devices(config: OverlapConfig) -> Devices:
    """The devices ``config`` plans for: ``device_memory`` each if given, else those of this process."""
    if config.device_memory is not None:
        return Devices.given(config.device_memory, config.devices or 1)
    return Devices.present(count=config.devices)


def _plan(apply_fn, params, x, x_curv, reused, config: OverlapConfig, dtype, partials, progress) -> MemoryPlan:
    """The memory plan for the devices here; a resumed computation keeps its chunks and product chunk."""
    saved = partials.load_json("plan") if partials is not None else None
    if saved is not None:
        config = config.replace(rhs_chunk=saved["columns_per_chunk"], product_chunk=saved["product_chunk"])
    devices = plan_devices(config)
    plan = plan_overlap(apply_fn, params, samples=int(x.shape[0]), input_shape=tuple(x.shape[1:]),
                        curvature_batch=int(x_curv.shape[0]), reused=reused, config=config, devices=devices,
                        dtype=dtype, host_runtime=host_rss() if devices.kind.startswith("cpu") else 0)
    if partials is not None and saved is None:
        partials.save_json("plan", plan.to_dict())
    if progress:
        print(plan.describe(), flush=True)
    return plan


def overlap_plan(apply_fn, params, x, y, group: Group, config: OverlapConfig | None = None) -> MemoryPlan:
    """The memory plan ``compute_overlaps`` would make for these inputs, without computing
    anything (``params`` may be ``jax.ShapeDtypeStruct``s); ``PlanError`` when it cannot fit."""
    config = checked(config, OverlapConfig)
    with computing_in(config.precision) as dtype:
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        x_curv = x[:config.curvature_samples] if config.curvature_samples else x
        reused = _reused(group, x, y)
        devices = plan_devices(config)
        return plan_overlap(apply_fn, params, samples=int(x.shape[0]), input_shape=tuple(x.shape[1:]),
                            curvature_batch=int(x_curv.shape[0]), reused=reused, config=config, devices=devices,
                            dtype=dtype)


def overlap_forecast(apply_fn, params, x, y, sigma, group: Group, config: OverlapConfig | None = None, *,
                     output_hessian: Callable | None = None) -> tuple[MemoryPlan, Forecast]:
    """The plan and the forecast before any solve (``symgrad overlap --plan --run``): the
    operator is linearised on these devices, the spectrum probe run and a product timed."""
    config = checked(config, OverlapConfig)
    with computing_in(config.precision) as dtype:
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        params = cast(params, dtype)
        x_curv = x[:config.curvature_samples] if config.curvature_samples else x
        sigma = None if sigma is None else jnp.asarray(sigma, dtype)
        config, plan, op = _planned_operator(apply_fn, params, x, x_curv, sigma, _reused(group, x, y), config, dtype,
                                             None, False, output_hessian)
        _, forecast = _spectrum(op, config, plan, None, x_curv, plan.n_params, False)
        return plan, forecast


def _planned_operator(apply_fn, params, x, x_curv, sigma, reused, config: OverlapConfig, dtype, partials, progress,
                      output_hessian):
    """The devices, the memory plan for them, and the Gauss-Newton operator on them as planned.
    Returns ``(config with the devices it resolved to, plan, operator)``."""
    mesh = _mesh(config, int(x_curv.shape[0]))
    config = config.replace(devices=1 if mesh is None else int(mesh.size))  # what the result records
    plan = _plan(apply_fn, params, x, x_curv, reused, config, dtype, partials, progress)
    op = GaussNewtonBlocks(apply_fn, params, x_curv, sigma, damping=config.damping, output_hessian=output_hessian,
                           vectors_per_product=plan.product_chunk, mesh=mesh)
    return config, plan, op


def _reused(group, x, y, acted=None):
    """Which elements leave the inputs unchanged bit for bit (the identity): their gradients
    equal the v's bit for bit, and they reuse the v-solves. Decided on the inputs alone."""
    acted = acted or [(group.act(g, x), group.target(g, y)) for g in group.elements]
    return [bool(jnp.array_equal(gx, x) and jnp.array_equal(gy, y)) for gx, gy in acted]


def _spectrum(op, config: OverlapConfig, plan: MemoryPlan, partials, x_curv, n_params, progress):
    """The spectrum probe stored with the result (resumed from the partials), and the forecast
    before any solve: the probe's products and the time of one product on these devices."""
    spectrum = partials.load_json("spectrum") if partials is not None else None
    if spectrum is None and config.probe_vectors > 0:
        spectrum = probe_spectrum(op.with_damping(0.0), n_vectors=config.probe_vectors, steps=config.probe_steps,
                                  basis_bytes=plan.basis_bytes, rank_bound=min(n_params, int(np.prod(x_curv.shape))))
        if partials is not None:
            partials.save_json("spectrum", spectrum)
    seconds = time_products(op, bucket(plan.chunks[0].columns))  # the size the first step multiplies
    columns = [c.columns for c in plan.chunks]
    if spectrum is None:
        forecast = Forecast.unknown(columns, seconds)
    else:
        forecast = Forecast.from_probe(columns, predicted_products(spectrum, config.damping), seconds)
    if progress:
        if spectrum is not None:
            lo, hi = predicted_products(spectrum, config.damping)
            print(f"spectrum probe: largest eigenvalue {spectrum['top_eigenvalues'][0]:.3g}, d_eff({config.damping:g}) "
                  f"in [{lo / KRYLOV_PER_DEFF:.0f}, {hi / KRYLOV_PER_DEFF:.0f}]", flush=True)
        print(forecast.describe(), flush=True)
    return spectrum, forecast


def _recycling_settings(chunks_log, planned: int) -> dict:
    """What the result says of its deflation space: the Lanczos vectors the plan let chunk 0
    keep, the Ritz vectors that deflated the later chunks and the products the space cost."""
    made = [entry for entry in chunks_log if "recycled_vectors" in entry]
    out = {"deflation_planned_vectors": int(planned), "deflation_vectors": 0, "deflation_ggn_products": 0}
    if made:
        last = made[-1]
        out.update(deflation_vectors=last["recycled_vectors"],
                   deflation_ggn_products=int(sum(entry["deflation_ggn_products"] for entry in made)))
        if last["recycled_smallest_ritz_value"] is not None:
            out["deflation_smallest_ritz_value"] = last["recycled_smallest_ritz_value"]
    return out


def _compute(apply_fn, params, x, y, sigma, group, config: OverlapConfig, *, dtype, loss_fn, output_hessian,
             sample_ids, partial_dir, progress, stop_after, attrs):
    flat, _ = ravel_pytree(params)
    n_params, n = int(flat.shape[0]), int(x.shape[0])
    x_curv = x[:config.curvature_samples] if config.curvature_samples else x
    if config.curvature_samples and config.curvature_samples > n:
        raise SymgradError(f"curvature_samples {config.curvature_samples} exceeds the {n} samples given")
    # (g.x, g'.y): a boost acts on the target, one step later, as T_{c dt} B_c (Group.target)
    acted = [(group.act(g, x), group.target(g, y)) for g in group.elements]
    reused = _reused(group, x, y, acted)
    partials = None
    if partial_dir is not None:
        key = dict(config.to_dict(), n_params=n_params, dtype=str(np.dtype(dtype)), group=group.name,
                   elements=list(group.elements), loss=_name_of(loss_fn, "smse"),
                   output_hessian=_name_of(output_hessian, "smse"))
        partials = store.Partials(partial_dir, store.fingerprint([flat, x, y, sigma, x_curv], key))
    plan = solver = op = None
    if config.wants_chi:
        config, plan, op = _planned_operator(apply_fn, params, x, x_curv, sigma, reused, config, dtype, partials,
                                             progress, output_hessian)
        solver = config.chi_solver(basis_bytes=plan.basis_bytes)
    settings = _settings(config, n_params=n_params, dtype=dtype, x_curv=x_curv, plan=plan, solver=solver,
                         loss_fn=loss_fn, output_hessian=output_hessian)

    def grads(xs, ys):  # on the host, grad_chunk rows at a time: the device holds a few rows only
        c = config.grad_chunk
        pieces = [np.asarray(per_example_gradients(apply_fn, params, xs[i:i + c], ys[i:i + c], sigma, loss_fn=loss_fn,
                                                   chunk_size=c)) for i in range(0, int(xs.shape[0]), c)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    v = grads(x, y)
    spectrum = forecast = None
    if config.wants_chi:
        settings["operator_rounding"] = op.rounding()  # every bound adds it (certify); not a chunk's cost
        settings["operator_rounding_ggn_products"] = int(op.products)
        spectrum, forecast = _spectrum(op, config, plan, partials, x_curv, n_params, progress)
        settings.update(forecast.to_attrs("forecast_before"), seconds_per_product=forecast.seconds_per_product)
    results, v_side, chunks_log, n_chunks = solve_overlaps(
        op, v, lambda k: grads(*acted[k]), reused, [str(e) for e in group.elements], solver=solver, rtol=config.rtol,
        chunks=None if plan is None else plan.chunks, partials=partials, stop_after=stop_after, progress=progress,
        forecast=forecast, recycle_vectors=0 if plan is None else plan.deflation_vectors)
    settings["rhs_chunks"] = n_chunks
    settings.update(_recycling_settings(chunks_log, 0 if plan is None else plan.deflation_vectors))
    piloted = [entry for entry in chunks_log if "forecast_pilot_products" in entry]
    for entry in piloted[:1]:  # chunk 0's pilot, and the first deflated chunk's
        settings.update(forecast_pilot_products=entry["forecast_pilot_products"],
                        forecast_pilot_at_products=entry["forecast_pilot_at_products"])
    for entry in piloted[1:2]:
        settings.update(forecast_deflated_pilot_products=entry["forecast_pilot_products"],
                        forecast_deflated_pilot_at_products=entry["forecast_pilot_at_products"])
    from symgrad.diagnostics.boosts import group_context

    context_vars, context_attrs = group_context(group, x, y)
    ds = store.build_result_dataset(
        group, [results[k] for k in range(len(group))], v_side, metric=config.metric, rtol=config.rtol,
        sample_ids=sample_ids if sample_ids is not None else np.arange(n), settings=settings,
        spectrum=spectrum, chunks=chunks_log, attrs={**context_attrs, **(attrs or {})})
    return ds.assign(context_vars) if context_vars else ds
