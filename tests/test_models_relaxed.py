"""The relaxed D4 group CNN (symgrad.models.relaxed) in float64.

- With equal coefficients over the group it *is* a G-CNN: the same outputs as the G-CNN
  whose filters are the coefficient-weighted sums of the banks (the G-CNN being checked
  against field transformations in tests/test_models_d4.py), to round-off.
- At initialisation (equal coefficients) its D4 equivariance error, as the study's
  diagnostic measures it, is round-off, like the G-CNN's; unequal coefficients break D4.
- The relaxation penalty's spread against a direct numpy sum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from symgrad.diagnostics import EquivarianceConfig
from symgrad.diagnostics.equivariance import equivariance_errors
from symgrad.groups import D4_ELEMENTS, named_group
from symgrad.loss import channel_scales
from symgrad.models import build, coefficient_spread, parameter_count, surrogate_apply

from test_equivariance_models import CLEARLY_NONZERO, RES, ROUND_OFF, _states  # the same float64 states and bounds


def _randomised(params, seed, coefficients="equal"):
    """Every parameter moved by numpy noise (non-trivial biases and norm scales); the
    coefficients random per bank but equal over the group (``"equal"``) or random per
    element too (``"unequal"``)."""
    rng = np.random.default_rng(seed)

    def move(path, p):
        p = np.asarray(p, np.float64)
        if path[-1].key != "coefficients":
            return jnp.asarray(p + 0.3 * rng.standard_normal(p.shape))
        banks = p.shape[1]
        row = 1.0 + 0.5 * rng.standard_normal(banks)
        if coefficients == "equal":
            return jnp.asarray(np.broadcast_to(row, p.shape).copy())
        return jnp.asarray(row + 0.3 * rng.standard_normal(p.shape))

    return jax.tree_util.tree_map_with_path(move, params)


def _as_gcnn(params):
    """The G-CNN parameters of a relaxed network whose coefficients are equal over the group:
    each filter is ``sum_l w[0, l] psi_l``."""
    if not isinstance(params, dict):
        return params
    if "coefficients" not in params:
        return {k: _as_gcnn(v) for k, v in params.items()}
    w = np.asarray(params["coefficients"])
    assert np.array_equal(w, np.broadcast_to(w[0], w.shape))
    out = {k: v for k, v in params.items() if k != "coefficients"}
    name = "kernel" if "kernel" in params else "projection_kernel"
    out[name] = jnp.einsum("l,l...->...", jnp.asarray(w[0]), params[name])
    return out


_SURROGATES = {}  # one physical map per model: the diagnostic compiles its programs once per map


def _d4_errors(name, params, x, y):
    sigma = channel_scales(y)
    if name not in _SURROGATES:
        _SURROGATES[name] = surrogate_apply(build(name, "tiny", RES).apply, sigma)
    f = _SURROGATES[name]
    return equivariance_errors(f, params, x, y, sigma, named_group("d4"), EquivarianceConfig(eval_chunk=24))


def test_equal_coefficients_give_the_gcnn_of_the_summed_banks(x64):
    relaxed, gcnn = build("relaxed", "tiny", RES), build("gcnn", "tiny", RES)
    params = _randomised(relaxed.init(jax.random.key(0), dtype=jnp.float64), 1)
    reference = _as_gcnn(params)
    # the same tree as the G-CNN's, leaf for leaf
    shapes = jax.eval_shape(gcnn.init, jax.random.key(0))
    assert jax.tree.structure(reference) == jax.tree.structure(shapes)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(shapes)))
    x = _states(2, 3)
    a, b = jax.jit(lambda p, q, x: (relaxed.apply(p, x), gcnn.apply(q, x)))(params, reference, x)
    assert float(jnp.linalg.norm(b - x) / jnp.linalg.norm(x)) > 0.1  # the network does something
    assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_relaxed_at_initialisation_is_d4_equivariant_to_round_off(x64):
    # the bound is the one tests/test_equivariance_models.py holds the G-CNN to; with equal
    # coefficients the network is that G-CNN (the test above)
    x, y = _states(2, 1), _states(2, 2)
    init = build("relaxed", "tiny", RES).init(jax.random.key(0), dtype=jnp.float64)
    assert float(coefficient_spread(init)) == 0.0
    at_init = _d4_errors("relaxed", init, x, y)
    assert float(at_init["equivariance_error"].max()) < ROUND_OFF
    assert float(at_init["test_error"].min()) > CLEARLY_NONZERO  # not trivially so


def test_unequal_coefficients_break_d4_and_equal_ones_do_not(x64):
    model = build("relaxed", "tiny", RES)
    init = model.init(jax.random.key(0), dtype=jnp.float64)
    x, y = _states(2, 1), _states(2, 2)
    equal = _d4_errors("relaxed", _randomised(init, 4, "equal"), x, y)
    assert float(equal["equivariance_error"].max()) < ROUND_OFF
    unequal_params = _randomised(init, 4, "unequal")
    assert float(coefficient_spread(unequal_params)) > 0.1
    unequal = _d4_errors("relaxed", unequal_params, x, y)
    err = unequal["equivariance_error"]
    assert float(err.sel(element="e").max()) < ROUND_OFF
    assert float(err.sel(element=list(D4_ELEMENTS[1:])).min()) > CLEARLY_NONZERO


def test_coefficient_spread_is_the_sum_of_squared_deviations_over_the_group():
    model = build("relaxed", "tiny", RES)
    params = _randomised(model.init(jax.random.key(0)), 5, "unequal")
    expected = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if path[-1].key == "coefficients":
            w = np.asarray(leaf, np.float64)
            assert w.shape == (8, model.config["filter_banks"])
            for bank in range(w.shape[1]):
                expected += sum((w[h, bank] - w[:, bank].mean()) ** 2 for h in range(8))
    assert expected > 0
    assert_allclose(float(coefficient_spread(params)), expected, rtol=1e-5)
    unet = build("unet", "tiny", RES)
    assert float(coefficient_spread(unet.init(jax.random.key(0)))) == 0.0  # no coefficients


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_parameters_are_the_gcnns_at_the_same_widths_times_the_banks_plus_coefficients(preset):
    relaxed = build("relaxed", preset, 128)
    cfg = {k: v for k, v in relaxed.config.items() if k not in ("name", "preset", "resolution", "filter_banks")}
    gcnn = build("gcnn", preset, 128, **cfg)
    banks = relaxed.config["filter_banks"]
    r = jax.eval_shape(relaxed.init, jax.random.key(0))
    g = jax.eval_shape(gcnn.init, jax.random.key(0))
    r_leaves = {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(r)[0]}
    g_leaves = {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(g)[0]}
    kernels = [k for k in g_leaves if k.endswith("kernel']")]
    coefficients = {k for k in r_leaves if k.endswith("['coefficients']")}
    assert {k.rsplit("[", 1)[0] for k in coefficients} == {k.rsplit("[", 1)[0] for k in kernels}
    for key, shape in g_leaves.items():
        assert r_leaves[key] == ((banks,) + shape if key in kernels else shape), key
    kernel_count = sum(int(np.prod(g_leaves[k])) for k in kernels)
    assert parameter_count(r) == parameter_count(g) + (banks - 1) * kernel_count + 8 * banks * len(kernels)


# -- training: the relaxation penalty and its record ------------------------------------


def test_the_penalty_adds_its_gradient_to_the_smse_step_of_the_relaxed_model_only():
    import optax

    from symgrad.train import TrainConfig
    from symgrad.train.state import TrainState
    from symgrad.train.step import relaxation_penalty, train_step

    assert relaxation_penalty(TrainConfig(model="gcnn", relaxation_weight=0.5)) is None
    # a resume compares it only where it weighs the loss
    assert TrainConfig(model="gcnn", relaxation_weight=0.5).material_differences(TrainConfig(model="gcnn")) == {}
    assert "relaxation_weight" in TrainConfig(model="relaxed", relaxation_weight=0.5).material_differences(
        TrainConfig(model="relaxed"))
    assert relaxation_penalty(TrainConfig(model="relaxed", relaxation_weight=0.0)) is None
    weight = 0.25
    penalty = relaxation_penalty(TrainConfig(model="relaxed", relaxation_weight=weight))
    params = {"layer": {"coefficients": jnp.asarray(np.random.default_rng(0).normal(1, 0.3, (8, 2)), jnp.float32),
                        "kernel": jnp.ones((3,), jnp.float32)}}
    assert_allclose(float(penalty(params)), weight * float(coefficient_spread(params)), rtol=1e-6)
    # a map whose SMSE does not depend on the parameters: plain SGD (lr 1) moves them by the
    # penalty's gradient alone, 2 weight (w - mean_h w), and the step reports the SMSE
    x = jnp.ones((2, 4, 4, 4))
    y = 2 * x
    sigma = np.ones(4)
    opt = optax.sgd(1.0)
    state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32), np.zeros(2, np.uint32))
    new, metrics = train_step(state, x, y, apply_fn=lambda p, q: q, optimizer=opt, sigma=sigma, penalty=penalty)
    w = np.asarray(params["layer"]["coefficients"], np.float64)
    assert_allclose(new.params["layer"]["coefficients"], w - 2 * weight * (w - w.mean(axis=0)), rtol=1e-5)
    assert_allclose(new.params["layer"]["kernel"], 1.0)
    assert_allclose(float(metrics["loss"]), 1.0)  # SMSE(x, 2x) with sigma 1, without the penalty
    plain, _ = train_step(state, x, y, apply_fn=lambda p, q: q, optimizer=opt, sigma=sigma)
    assert_allclose(plain.params["layer"]["coefficients"], w, rtol=1e-6)


def test_training_logs_the_spread_and_the_penalty_per_epoch(tmp_path):
    import xarray as xr

    from conftest import random_euler_states
    from symgrad import data, train
    from symgrad.train.run import load_run

    data_file = data.write_dataset(tmp_path / "data.nc", random_euler_states(10, 3, 8, 0),
                                   np.linspace(0.0, 0.1, 3), gamma=1.4)
    weight = 0.1
    config = train.TrainConfig(
        model="relaxed", preset="tiny", data=(str(data_file),), epochs=2, batch_size=4, learning_rate=1e-2,
        relaxation_weight=weight, eval_batch_size=4, rollout_trajectories=0, progress=False,
        split_fractions=(0.6, 0.2, 0.2), model_overrides={"multipliers": [1], "middle_blocks": 0},
    )
    lines = []
    train.train(config, tmp_path / "run", log=lines.append)
    assert "coefficient spread" in lines[-1]
    with xr.open_dataset(tmp_path / "run" / "metrics.nc") as ds:
        spread, penalty = ds["relaxation_spread"].values, ds["relaxation_penalty"].values
        assert ds["relaxation_spread"].attrs["long_name"] and ds["relaxation_penalty"].attrs["units"] == "1"
    assert spread.shape == (2,) and np.all(spread > 0)  # the coefficients left equality
    assert_allclose(penalty, weight * spread, rtol=1e-12)
    # the last record is the spread of the checkpointed parameters, measured independently
    params = load_run(tmp_path / "run").params
    assert_allclose(float(coefficient_spread(params)), spread[-1], rtol=1e-5)
    from test_cf_compliance import cf_findings  # skips when compliance-checker is not installed

    errors, _ = cf_findings(tmp_path / "run" / "metrics.nc")
    assert errors == []
