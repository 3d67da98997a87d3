"""Registry, shapes, dtypes, parameter counts and transform compatibility of the models."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from symgrad.errors import SymgradError
from symgrad.models import (
    MODELS,
    PRESETS,
    build,
    build_from_config,
    parameter_count,
    preset_config,
    surrogate_apply,
)


def test_public_names():
    assert MODELS == ("unet", "vit", "gcnn", "relaxed")
    assert PRESETS == ("tiny", "small", "paper")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("resolution", [32, 128])
def test_every_preset_builds_and_maps_state_to_state(name, preset, resolution):
    model = build(name, preset, resolution)
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    x = jax.ShapeDtypeStruct((2, resolution, resolution, 4), jnp.float32)
    y = jax.eval_shape(model.apply, params, x)
    assert (y.shape, y.dtype) == (x.shape, x.dtype)
    assert json.loads(json.dumps(model.config)) == model.config
    assert (model.name, model.preset, model.resolution) == (name, preset, resolution)
    assert resolution % model.downsampling_factor == 0


# Exact counts, derived term by term in docs/models.md: a change of architecture must show up here.
EXPECTED_COUNTS_128 = {
    ("unet", "tiny"): 22_548,
    ("unet", "small"): 1_728_932,
    ("unet", "paper"): 13_216_948,
    ("vit", "tiny"): 62_432,
    ("vit", "small"): 892_032,
    ("vit", "paper"): 4_936_192,
    ("gcnn", "tiny"): 10_998,
    ("gcnn", "small"): 1_939_934,
    ("gcnn", "paper"): 11_739_730,
    ("relaxed", "tiny"): 22_166,
    ("relaxed", "small"): 1_724_698,
    ("relaxed", "paper"): 13_206_270,
}


@pytest.mark.parametrize("key", sorted(EXPECTED_COUNTS_128))
def test_parameter_counts(key):
    params = jax.eval_shape(build(*key, resolution=128).init, jax.random.key(0))
    assert parameter_count(params) == EXPECTED_COUNTS_128[key]


def test_paper_targets_within_ten_percent():
    def count(name):
        return parameter_count(jax.eval_shape(build(name, "paper", 128).init, jax.random.key(0)))

    unet, vit, gcnn, relaxed = count("unet"), count("vit"), count("gcnn"), count("relaxed")
    assert abs(unet - 13e6) / 13e6 < 0.10
    assert abs(vit - 5e6) / 5e6 < 0.10
    # the G-CNN and the relaxed G-CNN are budgeted against the UNet they mirror
    assert abs(gcnn - unet) / unet < 0.15
    assert abs(relaxed - unet) / unet < 0.15
    for name in MODELS:
        assert 2_000 <= count_tiny(name) <= 80_000


def count_tiny(name):
    return parameter_count(build(name, "tiny", 32).init(jax.random.key(0)))


def test_vit_paper_arithmetic():
    # patch embed + positions + 6 layers + final LN + decoder (docs/models.md)
    w, p, n = 256, 8, (128 // 8) ** 2
    layer = 2 * (2 * w) + (w * 3 * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
    total = (p * p * 4 * w + w) + n * w + 6 * layer + 2 * w + (w * p * p * 4 + p * p * 4)
    assert parameter_count(jax.eval_shape(build("vit", "paper", 128).init, jax.random.key(0))) == total


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("resnet",), {}, "unknown model"),
        (("unet", "huge"), {}, "unknown preset"),
        (("unet", "tiny", 30), {}, "not divisible"),
        (("unet", "paper", 40), {}, "multiple of 16"),
        (("vit", "paper", 100), {}, "patch size 8"),
        (("gcnn", "tiny", 32), {"depth": 3}, "no option 'depth'"),
        (("vit", "tiny", 32), {"heads": 5}, "not divisible by heads"),
        (("vit", "tiny", 32), {"position_embedding": "rope"}, "position_embedding"),
    ],
)
def test_errors_say_what_to_do(args, kwargs, match):
    with pytest.raises(SymgradError, match=match):
        build(*args, **kwargs)


def test_apply_rejects_bad_grids():
    model = build("vit", "tiny", 32)
    params = jax.eval_shape(model.init, jax.random.key(0))
    with pytest.raises(SymgradError, match="position_embedding='sincos'"):
        jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((1, 16, 16, 4), jnp.float32))
    with pytest.raises(SymgradError, match=r"\(batch, nx, ny, 4\)"):
        jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    # conv models run on any grid divisible by their factor, not only the built resolution
    unet = build("unet", "tiny", 32)
    y = jax.eval_shape(unet.apply, jax.eval_shape(unet.init, jax.random.key(0)), jax.ShapeDtypeStruct((1, 48, 16, 4), jnp.float32))
    assert y.shape == (1, 48, 16, 4)


def test_overrides_reach_config_and_architecture():
    model = build("vit", "tiny", 32, patch=8, position_embedding="none")
    assert model.config["patch"] == 8 and model.config["position_embedding"] == "none"
    assert model.downsampling_factor == 8
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert "position" not in params
    again = build_from_config(model.config)
    assert again.config == model.config
    assert build("unet", "tiny", 64, multipliers=(1, 2, 2)).downsampling_factor == 8
    assert preset_config("unet", "paper")["multipliers"] == [1, 2, 4, 16]


def test_init_is_deterministic_and_has_sensible_scale():
    model = build("unet", "tiny", 32)
    a, b = model.init(jax.random.key(3)), model.init(jax.random.key(3))
    c = model.init(jax.random.key(4))
    la, lb, lc = jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)
    assert all(np.array_equal(u, v) for u, v in zip(la, lb))
    assert not all(np.array_equal(u, v) for u, v in zip(la, lc))
    k = a["stem"]["kernel"]  # 3x3x4 fan-in: LeCun std 1/sqrt(36)
    assert_allclose(float(jnp.std(k)), 1 / 6, rtol=0.3)
    assert np.all(a["stem"]["bias"] == 0)


@pytest.mark.parametrize("name", MODELS)
def test_jit_vmap_jvp_vjp(name):
    # one down-sampling level keeps the compile short; the transforms do not care about depth
    small = dict(multipliers=[1], middle_blocks=0) if name != "vit" else dict(depth=1)
    model = build(name, "tiny", 8, **small)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    rng = np.random.default_rng(2)  # numpy: no per-leaf threefry compilations
    tangent = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    u = jax.random.normal(jax.random.key(5), x.shape)

    @jax.jit
    def everything(params, tangent, x, u):
        f = lambda p: model.apply(p, x)  # noqa: E731
        y, jt = jax.jvp(f, (params,), (tangent,))
        (jtu,) = jax.vjp(f, params)[1](u)
        # per-sample vmap (the diagnostics' per-example path)
        y_vmap = jax.vmap(lambda xi: model.apply(params, xi[None])[0])(x)
        rhs = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(tangent), jax.tree.leaves(jtu)))
        return y, y_vmap, jnp.vdot(jt, u), rhs

    # GPUs default to TF32 contractions in float32, too coarse for the adjoint identity
    with jax.default_matmul_precision("highest"):
        y, y_vmap, lhs, rhs = everything(params, tangent, x, u)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert_allclose(y_vmap, y, rtol=2e-4, atol=2e-4)
    assert_allclose(lhs, rhs, rtol=1e-3)  # adjoint identity <J t, u> = <t, J^T u>


def test_float64_follows_params_and_input(x64):
    model = build("gcnn", "tiny", 16)
    params = jax.eval_shape(lambda k: model.init(k, dtype=jnp.float64), jax.random.key(0))
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
    y = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((1, 16, 16, 4), jnp.float64))
    assert y.dtype == jnp.float64


def test_residual_option():
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4))
    res = build("unet", "tiny", 8, multipliers=[1], middle_blocks=0)
    direct = build("unet", "tiny", 8, multipliers=[1], middle_blocks=0, residual=False)
    params = res.init(jax.random.key(0))
    a, b = jax.jit(lambda p, x: (res.apply(p, x), direct.apply(p, x)))(params, x)
    assert_allclose(a, x + b, rtol=1e-5, atol=1e-5)


def test_surrogate_apply_scales_in_and_out():
    sigma = np.array([2.0, 3.0, 3.0, 5.0])
    seen = {}

    def fake(params, x):
        seen["x"] = x
        return params * x

    f = surrogate_apply(fake, sigma)
    x = jnp.ones((1, 4, 4, 4))
    y = f(2.0, x)
    assert_allclose(seen["x"][0, 0, 0], 1 / sigma, rtol=1e-6)
    assert_allclose(y, 2.0 * x, rtol=1e-6)
    with pytest.raises(SymgradError, match="momentum"):
        surrogate_apply(fake, np.array([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(SymgradError, match="shape"):
        surrogate_apply(fake, np.ones(3))
