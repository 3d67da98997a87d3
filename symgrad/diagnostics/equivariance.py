"""Forward equivariance errors of a one-step surrogate (docs/design.md section 5).

For a model ``f(x) = apply_fn(params, x)``, test transitions ``(x_i, y_i)`` and every
element ``g`` of a group:

- ``equivariance_error[g, i] = SMSE(f(g.x_i), g'.f(x_i))``
- ``orbit_error[g, i]        = SMSE(f(g.x_i), g'.y_i)``  (accuracy on the transformed problem)

where ``g'`` is the element's action on targets and outputs (``Group.target``): ``g`` itself
for D4, translations and scaling; for a Galilean boost ``B_c`` it is ``T_{c dt} B_c``, the
boost followed by the shift of ``c dt`` cells the boosted flow makes in one step. Groups
under which SMSE is not invariant (scaling, boosts) say so in the result
(``smse_invariant``). A boost result may carry the data's own symmetry defect
(``data_defect``, :func:`symgrad.diagnostics.boosts.data_defect`): the error of a model that
reproduced the data's solver exactly, the floor below which fitting the data and being
symmetric start to conflict.
- ``test_error[i]            = SMSE(f(x_i), y_i)``
- ``persistence_error[i]     = SMSE(x_i, y_i)``     (the baseline f = identity on the same transitions)

The persistence baseline says whether the model has learnt anything: a test error above it
means the surrogate predicts the next state worse than "nothing changes". The identity is
exactly equivariant, so the baseline has no equivariance error of its own; its orbit error is
its test error (the SMSE is invariant), hence one number per sample.

All (element, sample) pairs run through one compiled program: the pairs are flattened,
cut into chunks of ``EquivarianceConfig.eval_chunk`` model evaluations (the last one padded, so the program is
compiled once) and the group action is vmapped with a traced element index
(``Group.act_index``). Peak memory is that of one model call on ``eval_chunk`` states.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from symgrad.diagnostics.config import EquivarianceConfig, checked
from symgrad.diagnostics.precision import cast, computing_in
from symgrad.errors import SymgradError
from symgrad.groups import Group
from symgrad.loss import check_scales, smse

PER_SAMPLE_VARIABLES = ("equivariance_error", "orbit_error", "test_error", "persistence_error")

_LONG_NAMES = {
    "equivariance_error": "equivariance error SMSE(f(g x), g' f(x)) (g' = g on targets; for boosts T_{c dt} B_c)",
    "orbit_error": "test error on the transformed transition SMSE(f(g x), g' y)",
    "test_error": "test error SMSE(f(x), y)",
    "persistence_error": "persistence baseline SMSE(x, y): the error of predicting no change",
}


def _check_inputs(apply_fn, params, x, y, sigma, group: Group):
    if not isinstance(group, Group):
        raise SymgradError(f"group must be a symgrad.groups.Group, got {type(group).__name__}")
    if x.ndim != 4 or x.shape[-1] != 4:
        raise SymgradError(f"x must be states (N, nx, ny, 4), got shape {x.shape}")
    if y.shape != x.shape:
        raise SymgradError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise SymgradError("no test transitions: pass at least one sample")
    check_scales(sigma, shared_momentum=group.invariant_loss)
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
    act_target = jax.vmap(group.target_index)  # outputs and targets: one step later (boosts also move)

    @jax.jit
    def pair_errors(params, x_all, fx_all, y_all, sigma, element_idx, sample_idx):
        gx = act(element_idx, x_all[sample_idx])
        f_gx = apply_fn(params, gx)
        equi = smse(f_gx, act_target(element_idx, fx_all[sample_idx]), sigma)
        orbit = smse(f_gx, act_target(element_idx, y_all[sample_idx]), sigma)
        return equi, orbit

    return predict, pair_errors


def equivariance_errors(
    apply_fn: Callable[[object, Array], Array],
    params,
    x: Float[Array, "N nx ny 4"],
    y: Float[Array, "N nx ny 4"],
    sigma: Float[Array, "4"],
    group: Group,
    config: EquivarianceConfig | None = None,
    *,
    samples: Sequence[int] | None = None,
    attrs: dict | None = None,
    data_defect=None,
):
    """Equivariance, orbit and test errors of ``apply_fn`` over ``group`` as an ``xarray.Dataset``.

    Args:
        apply_fn: the physical one-step map ``apply_fn(params, x) -> y`` on batches
            ``(B, nx, ny, 4)`` (e.g. ``symgrad.models.surrogate_apply(model.apply, sigma)``).
        params: its parameters (any pytree).
        x, y: test transitions, ``y`` the true state one step after ``x``.
        sigma: SMSE channel scales ``(4,)``.
        group: a ``symgrad.groups.Group``; every element is evaluated.
        config: ``EquivarianceConfig`` (default: its defaults): ``eval_chunk`` model
            evaluations per compiled call (bounds memory); ``precision`` ``"float64"``
            (default, as on the CLI) casts parameters and data to float64 and computes
            under ``jax.enable_x64``, whatever the dtype of a Flax model's parameters;
            ``"float32"`` computes in float32.
        samples: values of the ``sample`` coordinate (default ``0..N-1``), e.g. trajectory indices.
        attrs: extra global attributes (provenance).
        data_defect: optional ``(element, sample)`` floor stored beside the errors, the
            data's own defect of ``symgrad.diagnostics.boosts.data_defect`` on these
            transitions (the ``symgrad equivariance`` command computes it for boosts).

    Returns:
        Dataset with dims ``element``, ``sample``, ``stat``; variables
        ``equivariance_error`` and ``orbit_error`` ``(element, sample)``, ``test_error`` and
        ``persistence_error`` ``(sample)``, and ``<name>_stats`` over ``stat`` (see
        ``TUKEY_STATS``). Stored as float64; attribute ``compute_dtype`` says what was computed in.
    """
    config = checked(config, EquivarianceConfig)
    with computing_in(config.precision) as dtype:
        return _equivariance_errors(apply_fn, cast(params, dtype), jnp.asarray(x, dtype), jnp.asarray(y, dtype),
                                    sigma, group, config.eval_chunk, samples=samples,
                                    attrs={**config.to_dict(), "settings_class": "EquivarianceConfig",
                                           **(attrs or {})}, data_defect=data_defect)


def _equivariance_errors(apply_fn, params, x, y, sigma, group: Group, chunk_size: int, *, samples, attrs,
                         data_defect=None):
    _check_inputs(apply_fn, params, x, y, sigma, group)
    if data_defect is not None and np.shape(data_defect) != (len(group), x.shape[0]):
        raise SymgradError(f"data_defect must be (element, sample) = {(len(group), x.shape[0])}, "
                           f"got {np.shape(data_defect)}")
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
    persistence = smse(x, y, sigma_arr)

    n_pairs = n_elements * n_samples
    pending = []  # dispatch every chunk before reading any back, so the device never waits on the host
    for n_valid, idx in padded_chunks(n_pairs):
        e_idx, s_idx = np.divmod(idx, n_samples)
        pending.append((n_valid, pair_errors(params, x, fx, y, sigma_arr, jnp.asarray(e_idx, jnp.int32),
                                             jnp.asarray(s_idx, jnp.int32))))
    equi = np.concatenate([np.asarray(e, dtype=np.float64)[:n] for n, (e, _) in pending])
    orbit = np.concatenate([np.asarray(o, dtype=np.float64)[:n] for n, (_, o) in pending])
    test = np.asarray(test, dtype=np.float64)
    persistence = np.asarray(persistence, dtype=np.float64)
    equi = equi.reshape(n_elements, n_samples)
    orbit = orbit.reshape(n_elements, n_samples)

    from symgrad.diagnostics.boosts import group_context

    context_vars, context_attrs = group_context(group, x, y)
    return to_dataset(
        equi, orbit, test, persistence, group,
        samples=np.arange(n_samples) if samples is None else np.asarray(samples),
        attrs={"chunk_size": int(chunk_size), "compute_dtype": str(x.dtype),
               "resolution": f"{x.shape[1]}x{x.shape[2]}", **context_attrs, **(attrs or {})},
        data_defect=data_defect, extra_vars=context_vars,
    )


def to_dataset(equivariance_error, orbit_error, test_error, persistence_error, group: Group, *, samples, attrs=None,
               data_defect=None, extra_vars=None):
    """Assemble the result dataset (see ``equivariance_errors``) from per-sample arrays, in
    the schema of every result file (``symgrad.results.finish_result``); ``data_defect``
    ``(element, sample)`` and ``extra_vars`` (``symgrad.diagnostics.boosts.group_context``)
    are stored beside them."""
    import xarray as xr

    from symgrad.diagnostics.boosts import DEFECT, defect_variable
    from symgrad.results import element_coord, finish_result

    equivariance_error = np.asarray(equivariance_error, dtype=np.float64)
    orbit_error = np.asarray(orbit_error, dtype=np.float64)
    test_error = np.asarray(test_error, dtype=np.float64)
    persistence_error = np.asarray(persistence_error, dtype=np.float64)
    if len(samples) != test_error.shape[0]:
        raise SymgradError(f"{len(samples)} sample labels for {test_error.shape[0]} samples")

    def error_attrs(name):
        return {"long_name": _LONG_NAMES[name], "units": "1",
                "description": "scaled mean-squared error, docs/design.md section 4"}

    data_vars = {
        "equivariance_error": (("element", "sample"), equivariance_error, error_attrs("equivariance_error")),
        "orbit_error": (("element", "sample"), orbit_error, error_attrs("orbit_error")),
        "test_error": (("sample",), test_error, error_attrs("test_error")),
        "persistence_error": (("sample",), persistence_error, error_attrs("persistence_error")),
    }
    data_vars.update(extra_vars or {})
    stats_of = PER_SAMPLE_VARIABLES
    if data_defect is not None:
        data_vars.update(defect_variable(data_defect))
        stats_of = stats_of + (DEFECT,)
    coords = {
        "element": element_coord(group),
        "sample": ("sample", np.asarray(samples, dtype=np.int64)),
    }
    ds = xr.Dataset(data_vars, coords=coords)
    return finish_result(ds, diagnostic="equivariance", group=group.name,
                         title=f"symgrad forward equivariance diagnostic, group {group.name}",
                         attrs={"n_elements": len(group), **(attrs or {})}, stats_of=stats_of)
