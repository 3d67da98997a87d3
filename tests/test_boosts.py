"""Galilean boosts (issue 25, part 1): the group law and its action tables, the action against
the exact solution of a 1-D Riemann problem, a hand-written boost, the solver's own defect
falling with resolution, and the diagnostics acting on targets as T_{c dt} B_c."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from symgrad import euler
from symgrad.diagnostics import EquivarianceConfig, OverlapConfig
from symgrad.diagnostics import overlap as ov
from symgrad.diagnostics.boosts import data_defect
from symgrad.diagnostics.equivariance import equivariance_errors
from symgrad.errors import SymgradError
from symgrad.euler.exact_riemann import PrimitiveState, sample
from symgrad.groups import boost, boosts, named_group, translate
from symgrad.io import write_netcdf_atomic
from symgrad.loss import channel_scales, smse
from symgrad.results import check_result

GAMMA = 1.4


def random_states(n, res, seed, dtype=jnp.float64):
    """Physical, non-symmetric states with cellwise random density, velocity and pressure."""
    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.5, 1.5, (n, res, res))
    u, v = rng.uniform(-0.5, 0.5, (2, n, res, res))
    p = rng.uniform(0.5, 1.5, (n, res, res))
    return jnp.asarray(euler.primitive_to_conservative(rho, u, v, p, GAMMA), dtype)


# --- the group and its tables ---------------------------------------------------------------

def test_elements_are_velocities_of_whole_cell_shifts():
    g = boosts(16, 0.125, "x", (-2, -1, 0, 1, 2))
    assert g.name == "boost-x" and g.elements == (-1.0, -0.5, 0.0, 0.5, 1.0)  # c = k dx / dt = k / 2
    attrs = dict(g.element_attrs)
    assert attrs["shift_cells"] == (-2, -1, 0, 1, 2) and attrs["time_step"] == 0.125 and attrs["resolution"] == 16
    assert not g.invariant_loss and not g.same_target_action and g.identity == 0.0
    assert named_group("boost-y", 16, time_step=0.125, shifts=(0, 1)).elements == (0.0, 0.5)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_group_law_and_action_tables(x64, axis):
    shifts = (-2, -1, 0, 1, 2, 3)
    g = boosts(8, 0.1, axis, shifts)
    table = g.composition_table()
    for a, ka in enumerate(shifts):
        for b, kb in enumerate(shifts):
            want = shifts.index(ka + kb) if ka + kb in shifts else -1
            assert table[a, b] == want, (ka, kb)
    zero = g.index(g.identity)
    assert shifts[zero] == 0
    for a, c in enumerate(g.elements):
        assert g.compose(c, g.inverse(c)) == pytest.approx(0.0, abs=1e-15)
        assert np.isclose(g.compose(g.compose(c, c), g.inverse(c)), c, rtol=1e-12)
    # the actions on inputs (B_c) and on targets (T_{c dt} B_c) realise the table
    q = random_states(2, 8, seed=0)
    for a, ca in enumerate(g.elements):
        for b, cb in enumerate(g.elements):
            if table[a, b] < 0:
                continue
            cab = g.elements[table[a, b]]
            np.testing.assert_allclose(g.act(cab, q), g.act(ca, g.act(cb, q)), rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(g.target(cab, q), g.target(ca, g.target(cb, q)), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(g.act(0.0, q), q)
    np.testing.assert_array_equal(g.target(0.0, q), q)
    # the traced-index actions equal the static ones, under jit and vmap
    idx = jnp.arange(len(g))
    acted = jax.jit(jax.vmap(g.act_index, in_axes=(0, None)))(idx, q)
    moved = jax.jit(jax.vmap(g.target_index, in_axes=(0, None)))(idx, q)
    for i, c in enumerate(g.elements):
        np.testing.assert_allclose(acted[i], g.act(c, q), rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(moved[i], g.target(c, q), rtol=1e-15, atol=1e-15)
    # the target action moves the state k cells along the axis, the input action does not
    k, c = 3, g.elements[-1]
    ax = -3 if axis == "x" else -2
    np.testing.assert_array_equal(g.target(c, q), jnp.roll(g.act(c, q), k, axis=ax))


def test_bad_boost_settings_are_one_line_errors():
    with pytest.raises(SymgradError, match="time step"):
        named_group("boost-x", 16)
    with pytest.raises(SymgradError, match="time step"):
        boosts(16, 0.0)
    with pytest.raises(SymgradError, match="whole numbers"):
        boosts(16, 0.1, "x", (0, 1.5))
    with pytest.raises(SymgradError, match="distinct"):
        boosts(16, 0.1, "x", (1, 1))
    with pytest.raises(SymgradError, match="axis"):
        boosts(16, 0.1, "z")


def test_a_hand_written_boost_matches_the_library(x64):
    rng = np.random.default_rng(3)
    rho, p = rng.uniform(0.5, 1.5, (2, 5, 7))
    u, v = rng.uniform(-1, 1, (2, 5, 7))
    cx, cy = 0.7, -0.3
    # by hand: velocities shift by c, density and pressure stay
    u2, v2 = u + cx, v + cy
    e2 = p / (GAMMA - 1) + 0.5 * rho * (u2**2 + v2**2)
    want = np.stack([rho, rho * u2, rho * v2, e2], axis=-1)
    q = euler.primitive_to_conservative(rho, u, v, p, GAMMA)
    np.testing.assert_allclose(boost(q, cx, cy), want, rtol=1e-13, atol=1e-13)
    # and the pressure the library's state implies is unchanged
    _, uu, vv, pp = euler.conservative_to_primitive(boost(q, cx, cy), GAMMA)
    np.testing.assert_allclose(pp, p, rtol=1e-12)
    np.testing.assert_allclose(uu, u2, rtol=1e-13, atol=1e-14)


# --- against the exact solution ----------------------------------------------------------------

LEFT, RIGHT = PrimitiveState(1.0, 0.3, 1.0), PrimitiveState(0.125, -0.2, 0.1)


def _exact(n, t, c, x0=0.5):
    """The exact solution at time t of the Riemann problem boosted by c, sampled at the cell
    centres of an n x 1 grid (constant in y), as conservative states (1, n, 1, 4)."""
    x = (np.arange(n) + 0.5) / n
    left, right = PrimitiveState(LEFT.rho, LEFT.u + c, LEFT.p), PrimitiveState(RIGHT.rho, RIGHT.u + c, RIGHT.p)
    rho, u, p = sample((x - x0) / t, left, right, GAMMA) if t > 0 else (
        np.where(x < x0, left.rho, right.rho), np.where(x < x0, left.u, right.u), np.where(x < x0, left.p, right.p))
    q = euler.primitive_to_conservative(rho, u, 0 * u, p, GAMMA)
    return np.asarray(q)[None, :, None, :]


def test_the_action_commutes_with_the_exact_riemann_solution(x64):
    n, dt = 64, 0.1
    g = boosts(n, dt, "x", (-3, -1, 0, 2, 5))
    plain = _exact(n, dt, 0.0)
    assert np.abs(plain - _exact(n, 0.0, 0.0)).max() > 0.1  # the flow moves
    for c, k in zip(g.elements, dict(g.element_attrs)["shift_cells"]):
        np.testing.assert_allclose(g.act(c, _exact(n, 0.0, 0.0)), _exact(n, 0.0, c), rtol=1e-13, atol=1e-13)
        # one step later: the boosted problem's exact solution is T_{c dt} B_c of the plain one. The
        # exact solution is that of the whole line: compare the cells the shift does not wrap around.
        kept = slice(k, n) if k >= 0 else slice(0, n + k)
        np.testing.assert_allclose(np.asarray(g.target(c, plain))[:, kept], _exact(n, dt, c)[:, kept],
                                   rtol=1e-12, atol=1e-12, err_msg=str(c))
    # the action on inputs alone (no shift) does not, nor a boost that forgets the energy
    c, kept = g.elements[-1], slice(5, n)
    assert np.abs(np.asarray(g.act(c, plain)) - _exact(n, dt, c))[:, kept].max() > 0.1
    forgot = translate(np.concatenate([plain[..., :1], plain[..., 1:2] + plain[..., :1] * c, plain[..., 2:]], -1), 5)
    assert np.abs(np.asarray(forgot) - _exact(n, dt, c))[:, kept].max() > 0.1


# --- the data's own defect -----------------------------------------------------------------

def _sod(n):
    """Two Sod problems on the periodic line (interfaces at 1/4 and 3/4), n x 1 cells."""
    x = (np.arange(n) + 0.5) / n
    inside = (x >= 0.25) & (x < 0.75)
    rho, p = np.where(inside, 1.0, 0.125), np.where(inside, 1.0, 0.1)
    return np.asarray(euler.primitive_to_conservative(rho, 0 * x, 0 * x, p, GAMMA))[None, :, None, :]


def _sod_exact_density(n, t):
    x = (np.arange(n) + 0.5) / n
    low, high = PrimitiveState(0.125, 0.0, 0.1), PrimitiveState(1.0, 0.0, 1.0)
    first, second = sample((x - 0.25) / t, low, high, GAMMA)[0], sample((x - 0.75) / t, high, low, GAMMA)[0]
    return np.where(x < 0.5, first, second)


def test_the_solver_defect_falls_with_resolution_at_the_schemes_order(x64):
    # a boost of c = 1 over dt = 1/8 moves the flow n/8 cells: exact on every grid here
    dt, resolutions = 0.125, (32, 64, 128)
    defects, errors = [], []
    for n in resolutions:
        boosted, moved, plain = (np.asarray(a) for a in euler.boosted_solves(_sod(n), n // 8, dt))
        defects.append(np.abs(boosted - moved).sum() / np.abs(plain - _sod(n)).sum())
        errors.append(np.abs(plain[0, :, 0, 0] - _sod_exact_density(n, dt)).mean())  # the scheme's own L1 error
    np.testing.assert_allclose(euler.boost_defect(_sod(32), 4, dt), defects[:1], rtol=1e-12)
    assert all(a > b for a, b in zip(defects, defects[1:])), defects
    assert defects[0] > 1e-3  # the scheme is not Galilean invariant: a defect to measure
    order = float(euler.observed_order(resolutions[::2], defects[::2])[0])
    scheme = float(euler.observed_order(resolutions[::2], errors[::2])[0])
    # a discontinuous solution: first order in L1 for both (measured 0.89 and 0.91)
    assert 0.6 < order < 1.4 and abs(order - scheme) < 0.3, (defects, errors, order, scheme)


def test_the_data_defect_vanishes_at_the_identity_only(x64):
    res, dt = 8, 0.05
    x = random_states(3, res, seed=1)
    g = named_group("boost-x", res, time_step=dt, shifts=(-1, 0, 1))
    floor = data_defect(g, x, np.ones(4), dt)
    assert floor.shape == (3, 3) and np.all(floor[1] == 0.0) and np.all(floor[[0, 2]] > 1e-8)


@pytest.mark.slow
def test_the_data_defect_is_the_solvers_equivariance_error(x64):
    """The solver as the model: its equivariance error is the data's own defect, and the
    defect of the identity is 0."""
    res, dt = 8, 0.05
    x = random_states(3, res, seed=1)
    g = named_group("boost-x", res, time_step=dt, shifts=(-1, 0, 1))
    config = euler.EulerConfig()

    def solver_model(params, q):
        return euler.solve(q, jnp.asarray([dt], q.dtype), config).states[:, -1]

    y = solver_model(None, x)
    sigma = channel_scales(y)
    floor = data_defect(g, x, sigma, dt, config)
    assert floor.shape == (3, 3) and np.all(floor[1] == 0.0) and np.all(floor[[0, 2]] > 1e-8)
    ds = equivariance_errors(solver_model, {}, x, y, sigma, g, EquivarianceConfig(eval_chunk=4), data_defect=floor)
    np.testing.assert_allclose(ds["equivariance_error"].values, floor, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ds["orbit_error"].values, floor, rtol=1e-10, atol=1e-14)  # y = S(x)
    np.testing.assert_allclose(ds["data_defect"].values, floor)


# --- the diagnostics' action on targets -------------------------------------------------------

def _model(params, x):
    """Not boost-equivariant: a per-cell MLP and a one-sided stencil."""
    mlp = jnp.tanh(x @ params["w1"]) @ params["w2"]
    return x + 0.1 * mlp + 0.2 * (jnp.roll(x, 1, axis=1) - x)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": 0.5 * jax.random.normal(k1, (4, 6), jnp.float64), "w2": 0.5 * jax.random.normal(k2, (6, 4), jnp.float64)}


def test_equivariance_error_acts_on_outputs_and_targets_with_the_shift(x64, tmp_path):
    res, dt = 8, 0.125
    x, y = random_states(4, res, seed=2), random_states(4, res, seed=3)
    sigma = channel_scales(y)
    params = _params()
    g = named_group("boost-y", res, time_step=dt, shifts=(-2, 0, 1, 3))
    floor = np.full((4, 4), 1e-3)
    ds = equivariance_errors(_model, params, x, y, sigma, g, EquivarianceConfig(eval_chunk=5), data_defect=floor)
    fx = _model(params, x)
    for i, c in enumerate(g.elements):
        f_gx = _model(params, boost(x, 0.0, c))
        k = round(c * res * dt)
        np.testing.assert_allclose(ds["equivariance_error"].values[i],
                                   smse(f_gx, translate(boost(fx, 0.0, c), 0, k), sigma), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ds["orbit_error"].values[i],
                                   smse(f_gx, translate(boost(y, 0.0, c), 0, k), sigma), rtol=1e-12, atol=1e-15)
    assert float(np.abs(ds["equivariance_error"].sel(element=0.0)).max()) == 0.0
    # the result says what it measured: speeds, shifts, the speed against the data's velocities, SMSE not invariant
    assert ds["element"].attrs["units"] == "1" and list(ds["element"].attrs["shift_cells"]) == [-2, 0, 1, 3]
    assert list(ds["boost_shift"].values) == [-2, 0, 1, 3]
    v_max = float(np.max(np.abs(np.concatenate([x[..., 2] / x[..., 0], y[..., 2] / y[..., 0]]))))
    np.testing.assert_allclose(ds["boost_speed_ratio"].values, np.abs(np.asarray(g.elements)) / v_max, rtol=1e-12)
    assert int(ds.attrs["smse_invariant"]) == 0 and "not invariant" in ds.attrs["smse_invariance_note"]
    assert "data_defect_stats" in ds and ds["data_defect"].attrs["long_name"]
    ds.attrs.update(command="test", created="now", git_commit="x", package_versions="{}")
    assert check_result(ds) == []
    with xr.open_dataset(write_netcdf_atomic(ds, tmp_path / "b.nc")) as back:
        assert back["element"].attrs["shift_cells"].dtype == np.int32
        np.testing.assert_array_equal(back["data_defect"].values, floor)


def test_overlaps_use_gradients_on_the_boosted_and_shifted_targets(x64):
    from test_overlap_helpers import pixel_mlp
    from jax.flatten_util import ravel_pytree

    # the Euclidean overlaps: the chi metric takes the same gradients (test_overlap.py checks its solves)
    apply, params = pixel_mlp(jax.random.PRNGKey(0), hidden=6)
    res, dt = 4, 0.25
    x, y = random_states(3, res, seed=4), random_states(3, res, seed=5)
    sigma = np.array([1.3, 0.7, 0.9, 2.1])  # SMSE is not boost-invariant anyway
    g = named_group("boost-x", res, time_step=dt, shifts=(0, 1, -2))
    ds = ov.compute_overlaps(apply, params, x, y, sigma, g, OverlapConfig(metric="euclidean"))
    flat, unravel = ravel_pytree(params)
    jac = jax.jacrev(lambda q, xs, ys: smse(apply(unravel(q), xs), ys, sigma))
    v = np.asarray(jac(flat, x, y))
    for i, c in enumerate(g.elements):
        k = round(c * res * dt)
        u = np.asarray(jac(flat, boost(x, c, 0.0), translate(boost(y, c, 0.0), k, 0)))
        cos = np.einsum("ip,ip->i", u, v) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
        np.testing.assert_allclose(ds["overlap_cosine_euclidean"].values[i], cos, rtol=1e-10, atol=1e-12)
        assert (i == 0) == np.allclose(cos, 1.0, rtol=1e-12)  # only the identity leaves the gradients
    assert int(ds.attrs["smse_invariant"]) == 0 and list(ds["boost_shift"].values) == [0, 1, -2]


def test_figures_and_report_draw_the_floor_beside_every_model(x64, tmp_path):
    from symgrad import report
    from symgrad.plots import figures

    res, dt = 8, 0.125
    x, y = random_states(3, res, seed=6), random_states(3, res, seed=7)
    sigma = channel_scales(y)
    paths = []
    for group in ("boost-x", "boost-y"):
        g = named_group(group, res, time_step=dt, shifts=(-1, 0, 1))
        floor = np.abs(np.random.default_rng(0).normal(size=(3, 3))) * 1e-4
        floor[1] = 0.0
        for model, seed in (("unet", 0), ("vit", 1)):
            ds = equivariance_errors(_model, _params(), x, y, sigma, g, data_defect=floor,
                                     attrs={"model": model, "preset": "tiny", "seed": seed, "family": "CE-RP",
                                            "command": "equivariance"})
            paths.append(write_netcdf_atomic(ds, tmp_path / f"{model}-{group}.nc"))
    written = figures(paths, tmp_path / "fig", formats=("png",))
    assert (tmp_path / "fig" / "fig4_boosts.png") in written
    with xr.open_dataset(tmp_path / "fig" / "statistics_equivariance_boost-x.nc") as stats:
        assert list(stats["model"].values) == ["unet", "vit"]
        np.testing.assert_allclose(stats["data_defect_stats"].sel(model="unet", stat="median").values,
                                   np.median(floor, axis=1))
        assert "boost_speed_ratio" in stats and list(stats["element"].attrs["shift_cells"]) == [-1, 0, 1]
    md, _ = report.write_report(paths, tmp_path / "report", formats=("png",))
    text = md.read_text()
    assert "the data's own defect (floor)" in text and "SMSE is not invariant under this group" in text
    assert "fig4_boosts.png" in text and "UNet equivariance error" in text and "ViT equivariance error" in text


def test_the_command_takes_the_datas_time_step_and_stores_the_floor(tiny_trained_run, tmp_path, capsys):
    from conftest import TINY_RUN_TIMES

    from symgrad.cli import main

    run_dir, data_file = tiny_trained_run  # 8 x 8, times linspace(0, 0.1, 3): dt = 0.05, one cell = 2.5
    out = tmp_path / "bx.nc"
    assert main(["equivariance", "--run", str(run_dir), "--group", "boost-x", "--shifts", "-1", "0", "1",
                 "--samples", "2", "--out", str(out)]) == 0
    assert "the data's own defect" in capsys.readouterr().out
    dt = 0.1 / (TINY_RUN_TIMES - 1)
    with xr.open_dataset(out) as ds:
        np.testing.assert_allclose(ds["element"].values, np.array([-1, 0, 1]) / (8 * dt))
        assert float(ds["element"].attrs["time_step"]) == pytest.approx(dt) and int(ds.attrs["smse_invariant"]) == 0
        assert ds["data_defect"].shape == (3, 2) and float(ds["data_defect"].sel(element=0.0).max()) == 0.0
        assert float(ds["data_defect"].max()) > 0 and np.all(np.isfinite(ds["equivariance_error"].values))
        assert ds.attrs["time_step_source"] == "the data's time coordinate"
        assert "default settings" in ds.attrs["data_defect_solver"]  # random states: no solver recorded
    rc = main(["equivariance", "--run", str(run_dir), "--group", "boost-y", "--shifts", "1", "1",
               "--out", str(tmp_path / "by.nc")])
    assert rc == 2 and "distinct" in capsys.readouterr().err


def test_a_floor_or_time_step_the_file_does_not_record_is_said(capsys):
    """PDEGym's files record neither their solver nor, some, their times: the result and
    stderr say that the floor is symgrad's solver at its defaults and the speeds assume
    equispaced times; a non-boost group gets no such attributes."""
    from types import SimpleNamespace

    from symgrad.groups import boosts, translations
    from symgrad.inputs import boost_provenance

    def inputs(attrs, assumed):
        return SimpleNamespace(dataset=SimpleNamespace(attrs=[attrs], times_assumed=assumed), data_paths=["d.nc"])

    grp = boosts(8, 0.05, "x", shifts=(0, 1))
    bare = boost_provenance(inputs({}, True), grp)
    assert bare["time_step_source"].startswith("assumed") and "default settings" in bare["data_defect_solver"]
    err = capsys.readouterr().err
    assert "no time coordinate" in err and "does not record its solver" in err
    recorded = boost_provenance(inputs({"solver": "{}"}, False), grp)
    assert recorded["time_step_source"] == "the data's time coordinate"
    assert "its solver attribute" in recorded["data_defect_solver"] and capsys.readouterr().err == ""
    assert boost_provenance(inputs({}, True), translations(8, "x")) == {}
