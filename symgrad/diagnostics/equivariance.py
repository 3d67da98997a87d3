"""Forward equivariance errors of a one-step surrogate (DESIGN.md section 5).

For a model ``f(x) = apply_fn(params, x)``, test transitions ``(x_i, y_i)`` and every
element ``g`` of a group:

- ``equivariance_error[g, i] = SMSE(f(g.x_i), g.f(x_i))``
- ``orbit_error[g, i]        = SMSE(f(g.x_i), g.y_i)``  (accuracy on the transformed problem)
- ``test_error[i]            = SMSE(f(x_i), y_i)``

All (element, sample) pairs run through one compiled program: the pairs are flattened,
cut into chunks of ``chunk_size`` model evaluations (the last one padded, so the program is
compiled once) and the group action is vmapped with a traced element index
(``Group.act_index``). Peak memory is that of one model call on ``chunk_size`` states.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from symgrad.errors import SymgradError
from symgrad.groups import Group
from symgrad.loss import smse

#: The ``stat`` coordinate of the summary variables (Tukey box-plot statistics).
TUKEY_STATS: tuple[str, ...] = ("min", "q1", "median", "q3", "max", "whisker_low", "whisker_high", "mean")

PER_SAMPLE_VARIABLES = ("equivariance_error", "orbit_error", "test_error")

_LONG_NAMES = {
    "equivariance_error": "equivariance error SMSE(f(g x), g f(x))",
    "orbit_error": "test error on the transformed transition SMSE(f(g x), g y)",
    "test_error": "test error SMSE(f(x), y)",
}


def tukey_statistics(values, axis: int = -1) -> np.ndarray:
    """Box-plot statistics along ``axis``, in the order of ``TUKEY_STATS``, moved to the last axis.

    Quartiles by linear interpolation (numpy's default, as matplotlib's ``boxplot``);
    whiskers at the most extreme data within ``[q1 - 1.5 IQR, q3 + 1.5 IQR]`` (Tukey).
    Non-finite values are ignored; a slice without finite values gives NaN.
    """
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    out = np.full(v.shape[:-1] + (len(TUKEY_STATS),), np.nan)
    for idx in np.ndindex(v.shape[:-1]):
        row = v[idx]
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        q1, med, q3 = np.percentile(row, [25, 50, 75])
        iqr = q3 - q1
        inside = row[(row >= q1 - 1.5 * iqr) & (row <= q3 + 1.5 * iqr)]
        if inside.size == 0:
            # Values a few ulps apart: the interpolated quartiles can round to one number
            # strictly between the data (iqr = 0), leaving no datum inside the fences. The
            # whiskers are then the datum nearest the median.
            inside = row[[np.argmin(np.abs(row - med))]]
        out[idx] = (row.min(), q1, med, q3, row.max(), inside.min(), inside.max(), row.mean())
    return out


def _check_inputs(apply_fn, params, x, y, sigma, group: Group, chunk_size: int):
    if not isinstance(group, Group):
        raise SymgradError(f"group must be a symgrad.groups.Group, got {type(group).__name__}")
    if x.ndim != 4 or x.shape[-1] != 4:
        raise SymgradError(f"x must be states (N, nx, ny, 4), got shape {x.shape}")
    if y.shape != x.shape:
        raise SymgradError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise SymgradError("no test transitions: pass at least one sample")
    if int(chunk_size) < 1:
        raise SymgradError(f"chunk_size must be >= 1, got {chunk_size}")
    s = np.asarray(sigma)
    if s.shape != (4,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise SymgradError(f"sigma must be 4 positive channel scales, got {s!r}")
    if group.invariant_loss and s[1] != s[2]:
        raise SymgradError(
            "sigma has different m_x and m_y scales, which makes SMSE depend on the orientation; "
            "use one shared momentum scale (symgrad.loss.channel_scales)"
        )
    try:
        out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    except SymgradError:
        raise  # the model's own user-facing message already says what to do
    except Exception as exc:  # the model's own message says why; keep it to one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SymgradError(
            f"the model cannot be applied to states of shape {x.shape[1:]} ({first}); "
            "was it built for another resolution? Use data at the model's resolution"
        ) from None
    if getattr(out, "shape", None) != (1, *x.shape[1:]):
        raise SymgradError(
            f"the model maps states {(1, *x.shape[1:])} to {getattr(out, 'shape', out)}; "
            "a one-step surrogate must return states of the input's shape"
        )


# The jitted programs are cached per model (and group), so that repeated calls -- several
# checkpoints, groups, a benchmark's timed repeats -- compile once per input shape.
@functools.lru_cache(maxsize=32)
def _compiled_predict(apply_fn):
    @jax.jit
    def predict(params, x_all, sample_idx):
        return apply_fn(params, x_all[sample_idx])

    return predict


@functools.lru_cache(maxsize=32)
def _compiled_kernels(apply_fn, group: Group):
    predict = _compiled_predict(apply_fn)
    act = jax.vmap(group.act_index)

    @jax.jit
    def pair_errors(params, x_all, fx_all, y_all, sigma, element_idx, sample_idx):
        gx = act(element_idx, x_all[sample_idx])
        f_gx = apply_fn(params, gx)
        equi = smse(f_gx, act(element_idx, fx_all[sample_idx]), sigma)
        orbit = smse(f_gx, act(element_idx, y_all[sample_idx]), sigma)
        return equi, orbit

    return predict, pair_errors


def equivariance_errors(
    apply_fn: Callable[[object, Array], Array],
    params,
    x: Float[Array, "N nx ny 4"],
    y: Float[Array, "N nx ny 4"],
    sigma: Float[Array, "4"],
    group: Group,
    chunk_size: int = 64,
    *,
    samples: Sequence[int] | None = None,
    attrs: dict | None = None,
):
    """Equivariance, orbit and test errors of ``apply_fn`` over ``group`` as an ``xarray.Dataset``.

    Args:
        apply_fn: the physical one-step map ``apply_fn(params, x) -> y`` on batches
            ``(B, nx, ny, 4)`` (e.g. ``symgrad.models.surrogate_apply(model.apply, sigma)``).
        params: its parameters (any pytree).
        x, y: test transitions, ``y`` the true state one step after ``x``.
        sigma: SMSE channel scales ``(4,)``.
        group: a ``symgrad.groups.Group``; every element is evaluated.
        chunk_size: model evaluations per compiled call (bounds memory).
        samples: values of the ``sample`` coordinate (default ``0..N-1``), e.g. trajectory indices.
        attrs: extra global attributes (provenance).

    Returns:
        Dataset with dims ``element``, ``sample``, ``stat``; variables
        ``equivariance_error`` and ``orbit_error`` ``(element, sample)``, ``test_error``
        ``(sample)``, and ``<name>_stats`` over ``stat`` (see ``TUKEY_STATS``). Computed in
        the dtype of ``x`` (float64 under ``jax_enable_x64`` with float64 inputs), stored as float64.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y, dtype=x.dtype)
    _check_inputs(apply_fn, params, x, y, sigma, group, chunk_size)
    sigma_arr = jnp.asarray(np.asarray(sigma), dtype=x.dtype)

    n_samples, n_elements = x.shape[0], len(group)
    chunk = int(min(chunk_size, n_elements * n_samples))

    def padded_chunks(total):
        """Index ranges of fixed length ``chunk``; the tail repeats the last index."""
        for start in range(0, total, chunk):
            idx = np.arange(start, start + chunk)
            yield min(chunk, total - start), np.minimum(idx, total - 1).astype(np.int32)

    predict, pair_errors = _compiled_kernels(apply_fn, group)

    fx_parts = []
    for n_valid, idx in padded_chunks(n_samples):
        fx_parts.append(predict(params, x, jnp.asarray(idx))[:n_valid])
    fx = jnp.concatenate(fx_parts, axis=0).astype(x.dtype)
    test = smse(fx, y, sigma_arr)

    n_pairs = n_elements * n_samples
    pending = []  # dispatch every chunk before reading any back, so the device never waits on the host
    for n_valid, idx in padded_chunks(n_pairs):
        e_idx, s_idx = np.divmod(idx, n_samples)
        pending.append((n_valid, pair_errors(params, x, fx, y, sigma_arr, jnp.asarray(e_idx, jnp.int32),
                                             jnp.asarray(s_idx, jnp.int32))))
    equi = np.concatenate([np.asarray(e, dtype=np.float64)[:n] for n, (e, _) in pending])
    orbit = np.concatenate([np.asarray(o, dtype=np.float64)[:n] for n, (_, o) in pending])
    test = np.asarray(test, dtype=np.float64)
    equi = equi.reshape(n_elements, n_samples)
    orbit = orbit.reshape(n_elements, n_samples)

    return to_dataset(
        equi, orbit, test, group,
        samples=np.arange(n_samples) if samples is None else np.asarray(samples),
        attrs={"chunk_size": int(chunk_size), "compute_dtype": str(x.dtype),
               "resolution": f"{x.shape[1]}x{x.shape[2]}", **(attrs or {})},
    )


def to_dataset(equivariance_error, orbit_error, test_error, group: Group, *, samples, attrs=None):
    """Assemble the result dataset (see ``equivariance_errors``) from per-sample arrays."""
    import xarray as xr

    equivariance_error = np.asarray(equivariance_error, dtype=np.float64)
    orbit_error = np.asarray(orbit_error, dtype=np.float64)
    test_error = np.asarray(test_error, dtype=np.float64)
    if len(samples) != test_error.shape[0]:
        raise SymgradError(f"{len(samples)} sample labels for {test_error.shape[0]} samples")

    if group.element_units is None:
        element_values = np.array([str(g) for g in group.elements], dtype=object)
    elif all(isinstance(g, (int, np.integer)) for g in group.elements):
        element_values = np.array(group.elements, dtype=np.int64)
    else:
        element_values = np.array(group.elements, dtype=np.float64)
    element_attrs = {"long_name": group.element_long_name}
    if group.element_units is not None:
        element_attrs["units"] = group.element_units

    def error_attrs(name):
        return {"long_name": _LONG_NAMES[name], "units": "1",
                "description": "scaled mean-squared error, DESIGN.md section 4"}

    data_vars = {
        "equivariance_error": (("element", "sample"), equivariance_error, error_attrs("equivariance_error")),
        "orbit_error": (("element", "sample"), orbit_error, error_attrs("orbit_error")),
        "test_error": (("sample",), test_error, error_attrs("test_error")),
    }
    for name in PER_SAMPLE_VARIABLES:
        dims, values, _ = data_vars[name]
        stats_dims = dims[:-1] + ("stat",)
        data_vars[f"{name}_stats"] = (
            stats_dims, tukey_statistics(values, axis=-1),
            {"long_name": f"Tukey box-plot statistics over samples of {name}", "units": "1"},
        )
    coords = {
        "element": ("element", element_values, element_attrs),
        "sample": ("sample", np.asarray(samples, dtype=np.int64),
                   {"long_name": "test trajectory index in the data file(s)"}),
        "stat": ("stat", np.array(TUKEY_STATS, dtype=object),
                 {"long_name": "statistic over samples: quartiles (linear interpolation), "
                               "whiskers at the most extreme values within 1.5 IQR of the box"}),
    }
    global_attrs = {
        "title": f"symgrad forward equivariance diagnostic, group {group.name}",
        "Conventions": "CF-1.8",
        "diagnostic": "equivariance",
        "group": group.name,
        "n_elements": len(group),
    }
    global_attrs.update({k: _netcdf_attr(v) for k, v in (attrs or {}).items()})
    ds = xr.Dataset(data_vars, coords=coords, attrs=global_attrs)
    return ds


def _netcdf_attr(value):
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    import json

    return json.dumps(value, default=str)
