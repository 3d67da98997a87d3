"""The forward equivariance diagnostic on stand-in models with known symmetry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from symgrad.diagnostics import EquivarianceConfig
from symgrad.diagnostics.equivariance import equivariance_errors
from symgrad.results import TUKEY_STATS, tukey_statistics
from symgrad.errors import SymgradError
from symgrad.groups import D4_ELEMENTS, act_d4, d4_inverse, named_group
from symgrad.io import write_netcdf_atomic
from symgrad.loss import channel_scales, smse

N = 8


def random_states(n, seed, dtype=jnp.float64, res=N):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    rho = jax.random.uniform(k1, (n, res, res, 1), dtype, 0.5, 1.5)
    m = jax.random.uniform(k2, (n, res, res, 2), dtype, -0.5, 0.5)
    e = jax.random.uniform(k3, (n, res, res, 1), dtype, 2.0, 3.0)
    return jnp.concatenate([rho, m, e], axis=-1)


def standin_params(seed=0, dtype=jnp.float64, res=N):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "w1": jax.random.normal(k1, (4, 8), dtype) * 0.5,
        "w2": jax.random.normal(k2, (8, 4), dtype) * 0.5,
        "pos": jax.random.normal(k3, (res, res, 4), dtype) * 0.1,
    }


def pixel_stencil_model(params, x):
    """Not D4-equivariant: a per-pixel MLP mixes m_x and m_y arbitrarily and the stencil
    looks one way only. Periodic and position-free, so it is shift-equivariant."""
    mlp = jnp.tanh(x @ params["w1"]) @ params["w2"]
    stencil = 0.3 * (jnp.roll(x, 1, axis=1) - x) + 0.1 * (jnp.roll(x, -1, axis=2) - x)
    return x + 0.1 * mlp + stencil


def positional_model(params, x):
    """Not shift-equivariant either: a learned bias per grid cell."""
    return pixel_stencil_model(params, x) + params["pos"] * x[..., :1]


def d4_averaged_model(params, x):
    """D4-equivariant by construction: (1/8) sum_g g^-1 f(g x)."""
    outs = [act_d4(d4_inverse(g), pixel_stencil_model(params, act_d4(g, x))) for g in D4_ELEMENTS]
    return sum(outs) / len(outs)


@pytest.fixture
def problem(x64):
    x = random_states(5, seed=1)
    y = random_states(5, seed=2)
    return x, y, channel_scales(y), standin_params()


def dense_reference(apply_fn, params, x, y, sigma, group):
    fx = apply_fn(params, x)
    equi, orbit = [], []
    for g in group.elements:
        f_gx = apply_fn(params, group.act(g, x))
        equi.append(smse(f_gx, group.act(g, fx), sigma))
        orbit.append(smse(f_gx, group.act(g, y), sigma))
    return np.asarray(equi), np.asarray(orbit), np.asarray(smse(fx, y, sigma))


@pytest.mark.parametrize("group_name,chunk_size", [("d4", 7), ("d4", 1000), ("translate-y", 3), ("scale", 4)])
def test_matches_dense_reference(problem, group_name, chunk_size):
    x, y, sigma, params = problem
    group = named_group(group_name, N, stride=2)
    ds = equivariance_errors(positional_model, params, x, y, sigma, group, EquivarianceConfig(eval_chunk=chunk_size))
    equi, orbit, test = dense_reference(positional_model, params, x, y, sigma, group)
    np.testing.assert_allclose(ds["equivariance_error"].values, equi, rtol=1e-12, atol=1e-30)
    np.testing.assert_allclose(ds["orbit_error"].values, orbit, rtol=1e-12)
    np.testing.assert_allclose(ds["test_error"].values, test, rtol=1e-12)
    # the persistence baseline, in numpy: mean over pixels and channels of ((x - y) / sigma)^2
    persistence = np.mean(((np.asarray(x) - np.asarray(y)) / np.asarray(sigma)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(ds["persistence_error"].values, persistence, rtol=1e-12)
    assert ds["equivariance_error"].dims == ("element", "sample")
    assert list(ds["element"].values) == [str(g) if group_name == "d4" else g for g in group.elements]


def test_equivariant_model_gives_round_off_and_others_do_not(problem):
    x, y, sigma, params = problem
    d4 = named_group("d4")
    avg = equivariance_errors(d4_averaged_model, params, x, y, sigma, d4, EquivarianceConfig(eval_chunk=16))
    raw = equivariance_errors(pixel_stencil_model, params, x, y, sigma, d4, EquivarianceConfig(eval_chunk=16))
    assert float(avg["equivariance_error"].max()) < 1e-26
    assert float(raw["equivariance_error"].sel(element="e").max()) < 1e-26
    assert float(raw["equivariance_error"].sel(element=list(D4_ELEMENTS[1:])).min()) > 1e-8
    # for an equivariant model the orbit error equals the plain test error (SMSE is invariant)
    np.testing.assert_allclose(avg["orbit_error"].values, np.broadcast_to(avg["test_error"].values, (8, 5)), rtol=1e-10)

    shifts = named_group("translate-x", N)
    conv = equivariance_errors(pixel_stencil_model, params, x, y, sigma, shifts, EquivarianceConfig(eval_chunk=16))
    pos = equivariance_errors(positional_model, params, x, y, sigma, shifts, EquivarianceConfig(eval_chunk=16))
    assert float(conv["equivariance_error"].max()) < 1e-26
    assert float(pos["equivariance_error"].sel(element=0).max()) < 1e-26
    assert float(pos["equivariance_error"].sel(element=slice(1, None)).min()) > 1e-8


def test_scaling_of_a_scale_equivariant_model(problem):
    x, y, sigma, params = problem
    linear = lambda p, s: 0.7 * s + 0.3 * jnp.roll(s, 1, axis=1)  # noqa: E731 - homogeneous of degree 1
    ds = equivariance_errors(linear, params, x, y, sigma, named_group("scale", factors=(0.5, 1.0, 3.0)),
                             EquivarianceConfig(eval_chunk=4))
    assert float(ds["equivariance_error"].max()) < 1e-26
    # orbit error scales with a^2 (SMSE is homogeneous of degree 2)
    np.testing.assert_allclose(ds["orbit_error"].sel(element=3.0), 9 * ds["test_error"], rtol=1e-10)


def test_tukey_statistics_match_matplotlib():
    from matplotlib import cbook

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(size=(3, 40)), [[50.0], [-20.0], [0.0]]], axis=1)
    ours = tukey_statistics(values)
    assert ours.shape == (3, len(TUKEY_STATS))
    for row, stats in zip(values, ours):
        ref = cbook.boxplot_stats(row, whis=1.5)[0]
        s = dict(zip(TUKEY_STATS, stats))
        for key, mkey in [("q1", "q1"), ("median", "med"), ("q3", "q3"), ("whisker_low", "whislo"),
                          ("whisker_high", "whishi"), ("mean", "mean")]:
            assert s[key] == pytest.approx(ref[mkey], rel=1e-12), key
        assert s["min"] == row.min() and s["max"] == row.max()
    assert np.all(np.isnan(tukey_statistics(np.full((1, 4), np.nan))))


def test_tukey_statistics_of_values_a_few_ulps_apart():
    # Two chi cosines of an equivariant model (make demo): the interpolated quartiles round
    # to one number between them, so no datum lies inside the fences.
    row = np.array([float.fromhex("0x1.0000000000003p+0"), float.fromhex("0x1.0000000000001p+0")])
    s = dict(zip(TUKEY_STATS, tukey_statistics(row)))
    assert row.min() <= s["whisker_low"] <= s["whisker_high"] <= row.max()
    assert s["whisker_low"] in row and s["min"] == row.min() and s["max"] == row.max()


def test_written_dataset_schema(problem, tmp_path):
    x, y, sigma, params = problem
    for group_name, kind in [("d4", "OU"), ("translate-x", "i"), ("scale", "f")]:
        group = named_group(group_name, N, stride=4)
        ds = equivariance_errors(positional_model, params, x, y, sigma, group, EquivarianceConfig(eval_chunk=8),
                                 samples=[10, 11, 12, 13, 14], attrs={"checkpoint_step": 7, "config": {"a": 1}})
        path = write_netcdf_atomic(ds, tmp_path / f"{group_name}.nc")
        with xr.open_dataset(path) as back:
            assert set(back.data_vars) == {
                "equivariance_error", "orbit_error", "test_error", "persistence_error",
                "equivariance_error_stats", "orbit_error_stats", "test_error_stats", "persistence_error_stats",
            }
            assert back["equivariance_error"].dims == ("element", "sample")
            assert back["orbit_error"].dims == ("element", "sample")
            assert back["test_error"].dims == ("sample",)
            assert back["equivariance_error_stats"].dims == ("element", "stat")
            assert back["test_error_stats"].dims == ("stat",)
            assert list(back["stat"].values) == list(TUKEY_STATS)
            assert back["element"].dtype.kind in kind
            assert list(back["sample"].values) == [10, 11, 12, 13, 14]
            for name in ("equivariance_error", "orbit_error", "test_error", "persistence_error"):
                assert back[name].attrs["units"] == "1" and back[name].attrs["long_name"]
            assert back["element"].attrs["long_name"]
            assert back["group"].item() == group_name and back["diagnostic"].item() == "equivariance"
            assert back.attrs["checkpoint_step"] == 7 and back.attrs["config"] == '{"a": 1}'
            med = back["orbit_error_stats"].sel(stat="median").values
            np.testing.assert_allclose(med, np.median(back["orbit_error"].values, axis=1), rtol=1e-12)
            np.testing.assert_allclose(back["equivariance_error"].values, ds["equivariance_error"].values)


def test_runs_in_float32_when_asked():
    x = random_states(3, seed=1, dtype=jnp.float32)
    y = random_states(3, seed=2, dtype=jnp.float32)
    params = standin_params(dtype=jnp.float32)
    ds = equivariance_errors(pixel_stencil_model, params, x, y, channel_scales(y),
                             named_group("translate-x", N, stride=4), EquivarianceConfig(eval_chunk=5, precision="float32"))
    assert ds.attrs["compute_dtype"] == "float32"
    assert float(ds["equivariance_error"].max()) < 1e-10  # float32 round-off, squared
    assert np.all(np.isfinite(ds["test_error"].values))


def test_bad_inputs_raise_user_errors(problem):
    x, y, sigma, params = problem
    d4 = named_group("d4")
    small = random_states(2, seed=3, res=4)
    with pytest.raises(SymgradError, match="resolution"):
        equivariance_errors(positional_model, params, small, small, sigma, d4)
    with pytest.raises(SymgradError, match="same shape"):
        equivariance_errors(positional_model, params, x, y[:2], sigma, d4)
    with pytest.raises(SymgradError, match="momentum"):
        equivariance_errors(positional_model, params, x, y, np.array([1.0, 1.0, 2.0, 1.0]), d4)
    with pytest.raises(SymgradError, match="eval_chunk"):
        equivariance_errors(positional_model, params, x, y, sigma, d4, EquivarianceConfig(eval_chunk=0))
    with pytest.raises(SymgradError, match="input's shape"):
        equivariance_errors(lambda p, s: s[..., :2], params, x, y, sigma, d4)


def test_float32_parameters_are_computed_in_float64_by_default():
    """Flax's float32 parameters must not make the diagnostic quietly compute in float32;
    the caller's x64 setting (off here) is restored after."""
    assert not jax.config.jax_enable_x64
    rng = np.random.default_rng(0)
    params32 = {"w1": rng.normal(size=(4, 8)).astype(np.float32) * 0.5,
                "w2": rng.normal(size=(8, 4)).astype(np.float32) * 0.5,
                "pos": rng.normal(size=(N, N, 4)).astype(np.float32) * 0.1}
    x32 = rng.uniform(0.5, 1.5, size=(3, N, N, 4)).astype(np.float32)
    y32 = rng.uniform(0.5, 1.5, size=(3, N, N, 4)).astype(np.float32)
    sigma = np.ones(4)
    group = named_group("d4")
    ds = equivariance_errors(positional_model, params32, x32, y32, sigma, group, EquivarianceConfig(eval_chunk=16))
    low = equivariance_errors(positional_model, params32, x32, y32, sigma, group,
                              EquivarianceConfig(eval_chunk=16, precision="float32"))
    assert not jax.config.jax_enable_x64
    assert (ds.attrs["compute_dtype"], low.attrs["compute_dtype"]) == ("float64", "float32")
    with jax.enable_x64(True):  # the reference: the same float32 values, in float64
        as64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        equi, _, _ = dense_reference(positional_model, as64(params32), as64(x32), as64(y32), jnp.asarray(sigma), group)
    np.testing.assert_allclose(ds["equivariance_error"].values, equi, rtol=1e-10, atol=1e-30)
    # the float32 computation cannot match the float64 reference to that accuracy
    assert not np.allclose(low["equivariance_error"].values, equi, rtol=1e-10, atol=1e-30)
