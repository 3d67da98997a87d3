"""Where overlap results live: the inputs' fingerprint, resumable partial results, and the
schema of the result dataset (docs/overlap.md section 6).

Partial results (``RESULT.nc.partial/``): ``fingerprint.json`` (hash of parameters, data,
sigma, curvature batch and every setting that changes a number), ``spectrum.json`` (the
probe summary) and one ``chunk_<c>.npz`` per solved right-hand-side chunk: the results of
its elements and, for chunk 0, the v-solves later chunks need. Each file is written
atomically and holds a whole chunk, so a kill at any moment leaves either the chunk or
nothing, and the rerun solves exactly what the uninterrupted run would have. Different
inputs are refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import xarray as xr

from symgrad.diagnostics.certify import FLAG_DEFINITION, certify_element
from symgrad.errors import SymgradError
from symgrad.io import DIGEST_SUFFIX, atomic_write, is_intact, record_digest, write_json_atomic
from symgrad.results import element_coord, finish_result

# The per-sample overlaps that figures draw (a NAME_stats each).
OVERLAP_SUMMARIES = ("overlap_cosine_chi", "overlap_frobenius_chi", "overlap_cosine_euclidean",
                     "overlap_frobenius_euclidean")


def fingerprint(arrays, settings: dict) -> str:
    """SHA-256 of the arrays (shape, dtype, bytes) and the JSON of ``settings``."""
    h = hashlib.sha256()
    for arr in arrays:
        a = np.ascontiguousarray(np.asarray(arr)) if arr is not None else np.zeros(0)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class Partials:
    """The partial-results directory of one overlap computation (all writes atomic)."""

    def __init__(self, directory, fingerprint_: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = self.dir / "fingerprint.json"
        if stamp.exists():
            try:
                old = json.loads(stamp.read_text()).get("fingerprint")
            except (ValueError, AttributeError):
                raise SymgradError(f"{stamp} is damaged; delete {self.dir} to start afresh (its chunks cannot be "
                                   "tied to these inputs)") from None
            if old != fingerprint_:
                raise SymgradError(
                    f"partial results in {self.dir} were computed from different inputs or "
                    "settings; delete that directory to start afresh, or rerun with the "
                    "original inputs to resume"
                )
        else:
            write_json_atomic(stamp, {"fingerprint": fingerprint_})

    def load_chunk(self, c):
        """``(element results by index, v-side or None, log entry)`` of chunk ``c``, or None
        when it is not there, or damaged: a chunk whose bytes no longer match the SHA-256
        written beside it, or that cannot be read (truncated), is said so, removed and
        solved again, as ``symgrad generate`` does with its chunks."""
        path = self.dir / f"chunk_{c}.npz"
        if not path.exists():
            return None
        sidecar = path.with_name(path.name + DIGEST_SUFFIX)
        if sidecar.exists() and not is_intact(path):
            return _damaged(path, f"its SHA-256 in {sidecar.name} does not match")
        elements, v_side = {}, {}
        try:
            with np.load(path) as f:
                for key in f.files:
                    head, _, name = key.partition("/")
                    if head == "v":
                        v_side[name] = f[key]
                    elif head.startswith("e"):
                        elements.setdefault(int(head[1:]), {})[name] = f[key]
                log = json.loads(str(f["log"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            return _damaged(path, f"{type(exc).__name__}: {str(exc)[:100]}")
        return elements, (v_side or None), log

    def save_chunk(self, c, elements: dict, v_side: dict | None, log: dict):
        arrays = {f"e{k}/{name}": np.asarray(a) for k, res in elements.items() for name, a in res.items()}
        arrays.update({f"v/{name}": np.asarray(a) for name, a in (v_side or {}).items()})
        arrays["log"] = np.asarray(json.dumps(log))
        with atomic_write(self.dir / f"chunk_{c}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        record_digest(self.dir / f"chunk_{c}.npz")

    def load_json(self, name):
        path = self.dir / f"{name}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as exc:  # cut short or damaged: computed again
            return _damaged(path, str(exc)[:100])

    def save_json(self, name, payload):
        write_json_atomic(self.dir / f"{name}.json", payload)


def _damaged(path: Path, why: str) -> None:
    import sys

    print(f"symgrad: {path} is damaged ({why}); solving it again", file=sys.stderr)
    path.unlink(missing_ok=True)
    path.with_name(path.name + DIGEST_SUFFIX).unlink(missing_ok=True)
    return None


def remove_partials(directory) -> None:
    """Delete a partial-results directory once the final result is safely written."""
    if directory is not None and Path(directory).exists():
        shutil.rmtree(directory)


# ----------------------------------------------------------------------------- schema


def _var(dims, data, long_name, units="1", **extra):
    return (dims, np.asarray(data), {"long_name": long_name, "units": units, **extra})


def spectrum_variables(summary) -> dict:
    """The probe summary as dataset variables (shared by overlap results and ``symgrad spectrum``)."""
    if summary is None:
        return {}
    d = ("damping_grid",)
    return {
        "ggn_top_eigenvalues": _var(("eigen_index",), summary["top_eigenvalues"],
                                    "largest Ritz values of the Gauss-Newton matrix G (block Lanczos)", plot_scale="log"),
        "ggn_top_eigenvalue_residuals": _var(("eigen_index",), summary["top_residuals"],
                                             "Lanczos residual norm of each Ritz pair (an eigenvalue lies within it)",
                                             plot_scale="log"),
        "effective_dimension": _var(d, summary["effective_dimension"],
                                    "d_eff(lambda) = tr(G (G + lambda I)^-1), Hutchinson estimate"),
        "effective_dimension_lower": _var(d, summary["effective_dimension_lower"],
                                          "lower end of the quadrature interval of d_eff (Gauss-Radau)"),
        "effective_dimension_upper": _var(d, summary["effective_dimension_upper"],
                                          "upper end of the quadrature interval of d_eff (Gauss)"),
        "effective_dimension_stderr": _var(d, summary["effective_dimension_stderr"],
                                           "standard error of the Hutchinson average over probe vectors"),
    }


def spectrum_coords(summary) -> dict:
    if summary is None:
        return {}
    return {"damping_grid": ("damping_grid", np.asarray(summary["dampings"], np.float64),
                             {"long_name": "damping lambda of the effective dimension", "units": "1"}),
            "eigen_index": ("eigen_index", np.arange(len(summary["top_eigenvalues"])),
                            {"long_name": "rank of the Ritz value, largest first", "units": "1"})}


def spectrum_attrs(summary) -> dict:
    if summary is None:
        return {}
    return {
        "ggn_trace": float(summary["trace"]), "ggn_trace_stderr": float(summary["trace_stderr"]),
        "ggn_rank_bound": int(summary["rank_bound"]), "spectrum_probe_vectors": int(summary["probe_vectors"]),
        "spectrum_probe_steps": int(summary["probe_steps"]), "spectrum_probe_ggn_products": int(summary["ggn_products"]),
    }


def _certificates(results, vv, e_v, rho_v, rtol, bound_u: str):
    """``certify_element`` of every element, with the energy bounds ``bound_u`` of its u-solves
    and the rounding of its forms."""
    return [certify_element(r["overlap_matrix_chi"], r["chi_uu"], vv, r[bound_u], e_v, rtol,
                            (r["overlap_matrix_chi_rounding"], r["chi_uu_rounding"], rho_v)) for r in results]


def build_result_dataset(group, results: list[dict], v_side: dict, *, metric: str, rtol: float, sample_ids,
                         settings: dict, spectrum=None, chunks=None, attrs: dict | None = None) -> xr.Dataset:
    """Assemble per-element results into the overlap dataset; bounds and flags by ``certify``."""
    ee = ("element", "sample")
    mm = ("element", "sample_i", "sample_j")
    stack = lambda name: np.stack([r[name] for r in results])  # noqa: E731
    diag = lambda m: np.diagonal(m, axis1=-2, axis2=-1)  # noqa: E731
    m_euc = stack("overlap_matrix_euclidean")
    norm_u = stack("grad_norm_u")
    norm_v = np.asarray(v_side["grad_norm_v"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fro_euc = diag(m_euc) / np.linalg.norm(m_euc, axis=(-2, -1))[:, None]
        cos_euc = diag(m_euc) / (norm_u * norm_v[None, :])
    data = {
        "overlap_matrix_euclidean": _var(mm, m_euc, "Euclidean gradient overlap u_i^g . v_j"),
        "overlap_cosine_euclidean": _var(ee, cos_euc, "Euclidean cosine of u_i^g and v_i"),
        "overlap_frobenius_euclidean": _var(ee, fro_euc, "Euclidean M^g_ii / ||M^g||_F"),
        "grad_norm_u": _var(ee, norm_u, "Euclidean norm of u_i^g = grad L(g.x_i, g'.y_i)"),
        "grad_norm_v": _var(("sample",), norm_v, "Euclidean norm of v_i = grad L(x_i, y_i)"),
    }
    out_attrs = {"n_flagged": 0, "ggn_products": int(sum(c.get("ggn_products", 0) for c in chunks or []))}
    if metric in ("chi", "both"):
        vv, e_v, res_v, rho_v = (np.asarray(v_side[k], np.float64)
                                 for k in ("chi_vv", "error_bound_v", "residual_bound_v", "chi_vv_rounding"))
        certs = _certificates(results, vv, e_v, rho_v, rtol, "error_bound_u")
        rigorous = _certificates(results, vv, res_v, rho_v, rtol, "residual_bound_u")
        cstack = lambda name: np.stack([getattr(c, name) for c in certs])  # noqa: E731
        flag = cstack("not_met")
        out_attrs["n_flagged"] = int(flag.sum())
        out_attrs["max_relative_bound"] = float(max(c.worst for c in certs))
        null_desc = ("null-space share lambda ||chi b||^2 / <b, b>_chi = -d ln <b, b>_chi / d ln lambda: "
                     "1 when all of <b, b>_chi behaves as in the null space of G (grows as 1/lambda)")
        data.update(
            overlap_matrix_chi=_var(mm, stack("overlap_matrix_chi"), "chi-metric gradient overlap <u_i^g, v_j>_chi (corrected estimate)"),
            overlap_matrix_chi_bound=_var(mm, cstack("matrix_bound"), "certified bound on |error| of overlap_matrix_chi"),
            overlap_matrix_chi_flag=_var(mm, cstack("matrix_flag"), "bound / sqrt(chi_uu_i chi_vv_j) exceeds rtol"),
            overlap_cosine_chi=_var(ee, cstack("cosine"), "chi cosine <u_i^g, v_i>_chi / sqrt(<u,u>_chi <v,v>_chi)"),
            overlap_cosine_chi_bound=_var(ee, cstack("cosine_bound"), "certified bound on |error| of overlap_cosine_chi"),
            overlap_frobenius_chi=_var(ee, cstack("frobenius"), "chi M^g_ii / ||M^g||_F"),
            overlap_frobenius_chi_bound=_var(ee, cstack("frobenius_bound"), "certified bound on |error| of overlap_frobenius_chi"),
            chi_uu=_var(ee, stack("chi_uu"), "<u_i^g, u_i^g>_chi (corrected estimate)"),
            chi_uu_bound=_var(ee, stack("error_bound_u") + stack("chi_uu_rounding"),
                              "certified bound on |error| of chi_uu"),
            chi_vv=_var(("sample",), vv, "<v_i, v_i>_chi (corrected estimate)"),
            chi_vv_bound=_var(("sample",), e_v + rho_v, "certified bound on |error| of chi_vv"),
            residual_bound_u=_var(ee, stack("residual_bound_u"), "||r||^2 / lambda for the u-solve: the bound that holds in floating point"),
            residual_bound_v=_var(("sample",), res_v, "||r||^2 / lambda for the v-solve: the bound that holds in floating point"),
            certified_by_residual_bound=_var(ee, ~np.stack([c.not_met for c in rigorous]),
                                             "every value of (element, sample) meets rtol with the residual bounds alone"),
            residual_norm_u=_var(ee, stack("residual_norm_u"), "||u - (lambda I + G) z||_2, recomputed explicitly"),
            residual_norm_v=_var(("sample",), v_side["residual_norm_v"], "||v - (lambda I + G) w||_2, recomputed explicitly"),
            iterations_u=_var(ee, stack("iterations_u"), "solver iterations of the u-solve (CG steps or block steps)", "count"),
            iterations_v=_var(("sample",), v_side["iterations_v"], "solver iterations of the v-solve", "count"),
            converged_u=_var(ee, stack("converged_u"), "chi_uu is certified at rtol (chi_uu_bound <= rtol chi_uu)"),
            converged_v=_var(("sample",), v_side["converged_v"], "chi_vv is certified at rtol (chi_vv_bound <= rtol chi_vv)"),
            null_space_share_u=_var(ee, stack("null_space_share_u"), null_desc),
            null_space_share_v=_var(("sample",), v_side["null_space_share_v"], null_desc),
            reused_v_solves=_var(("element",), stack("reused_v_solves").astype(bool), "u^g == v bit for bit, v-solves reused"),
            solver_chunk=_var(("element",), stack("chunk").astype(np.int32), "right-hand-side chunk that solved this element", "1"),
            tolerance_not_met=_var(ee, flag, "some chi value of (element, sample) has bound above rtol (see tolerance_definition)"),
        )
        data.update(spectrum_variables(spectrum))
    sample_ids = np.asarray(sample_ids)
    coords = {
        "element": element_coord(group),
        "sample": ("sample", sample_ids),
        "sample_i": ("sample_i", sample_ids, {"long_name": "test trajectory index of u_i^g"}),
        "sample_j": ("sample_j", sample_ids, {"long_name": "test trajectory index of v_j"}),
    }
    if metric in ("chi", "both"):
        coords.update(spectrum_coords(spectrum))
    ds = xr.Dataset(data, coords=coords)
    info = {"metric": metric, "rtol": float(rtol), **settings, **out_attrs}
    if metric in ("chi", "both"):
        info.update(tolerance_definition=FLAG_DEFINITION, solver_chunks=chunks or [], **spectrum_attrs(spectrum))
    names = [n for n in OVERLAP_SUMMARIES if n in ds]
    return finish_result(ds, diagnostic="overlap", group=group.name, title=f"symgrad gradient overlaps, group {group.name}",
                         attrs={**info, **(attrs or {})}, stats_of=names)
