"""The overlap engine against dense linear algebra, plus controls, certification and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from jax.flatten_util import ravel_pytree

from symgrad.diagnostics import overlap as ov
from symgrad.errors import SymgradError
from symgrad.groups import named_group
from symgrad.io import write_netcdf_atomic
from symgrad.loss import smse
from test_overlap_helpers import (
    SIGMA, d4_average, dense_damped_ggn, flat_mlp, pixel_mlp, small_cnn, transitions,
)

D4 = named_group("d4")
_MODELS = {}


def model(name):
    """Build each tiny model once (float64), so the jitted solver compiles once per model."""
    if name not in _MODELS:
        builder = {"pixel_mlp": pixel_mlp, "flat_mlp": flat_mlp, "small_cnn": small_cnn}[name]
        _MODELS[name] = builder(jax.random.PRNGKey(0))
    return _MODELS[name]


_JACOBIANS = {}


def reference(apply, params, x, y, group, damping):
    """Dense u, v, chi and every derived quantity, independently of the engine."""
    flat, unravel = ravel_pytree(params)
    if apply not in _JACOBIANS:  # per-sample gradients as the Jacobian of the loss vector
        _JACOBIANS[apply] = jax.jit(jax.jacrev(lambda q, xs, ys: smse(apply(unravel(q), xs), ys, SIGMA)))

    def grads(xs, ys):
        return np.asarray(_JACOBIANS[apply](flat, xs, ys))

    a, cond = dense_damped_ggn(apply, params, x, SIGMA, damping)
    v = grads(x, y)
    us = [grads(group.act(g, x), group.act(g, y)) for g in group.elements]
    n = v.shape[0]
    chi_all = np.linalg.solve(a, np.concatenate([v] + us).T)  # one factorisation for all
    chi_v = chi_all[:, :n]
    vv = np.einsum("pi,pi->i", v.T, chi_v)
    out = {k: [] for k in ("m", "m_euc", "uu", "cos", "fro", "cos_euc", "fro_euc")}
    for k, u in enumerate(us):
        m = u @ chi_v
        uu = np.einsum("pi,pi->i", u.T, chi_all[:, n * (k + 1) : n * (k + 2)])
        me = u @ v.T
        out["m"].append(m)
        out["m_euc"].append(me)
        out["uu"].append(uu)
        out["cos"].append(np.diag(m) / np.sqrt(uu * vv))
        out["fro"].append(np.diag(m) / np.linalg.norm(m))
        out["cos_euc"].append(np.diag(me) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1))
        out["fro_euc"].append(np.diag(me) / np.linalg.norm(me))
    out = {k: np.stack(a) for k, a in out.items()}
    out["vv"] = vv
    out["cond"] = cond
    return out


def assert_chi_matches(ds, ref, tol):
    scale = np.sqrt(np.abs(ref["uu"])[:, :, None] * np.abs(ref["vv"])[None, None, :])
    err = np.abs(ds.overlap_matrix_chi.values - ref["m"])
    assert (err <= tol * scale).all(), (err / scale).max()
    np.testing.assert_allclose(ds.chi_uu.values, ref["uu"], rtol=tol)
    np.testing.assert_allclose(ds.chi_vv.values, ref["vv"], rtol=tol)
    np.testing.assert_allclose(ds.overlap_cosine_chi.values, ref["cos"], rtol=0, atol=tol)
    np.testing.assert_allclose(ds.overlap_frobenius_chi.values, ref["fro"], rtol=0, atol=tol)


def assert_bounds_hold(ds, ref):
    """Every reported bound bounds the error against the dense reference.

    The bound certifies the error against the exact chi of the operator *as evaluated*;
    the dense G is rounded differently (a perturbation ~eps ||G||), which moves the exact
    answer by up to ~cond(A) eps relative. That, and no more, is the slack allowed.
    """
    slack = 4 * ref["cond"] * np.finfo(np.float64).eps
    scale = np.sqrt(np.abs(ref["uu"])[:, :, None] * np.abs(ref["vv"])[None, None, :])
    err = np.abs(ds.overlap_matrix_chi.values - ref["m"])
    assert (err <= ds.overlap_matrix_chi_bound.values + slack * scale).all()
    assert (np.abs(ds.chi_uu.values - ref["uu"]) <= ds.chi_uu_bound.values + slack * ref["uu"]).all()
    assert (np.abs(ds.chi_vv.values - ref["vv"]) <= ds.chi_vv_bound.values + slack * ref["vv"]).all()
    for name, key in (("overlap_cosine_chi", "cos"), ("overlap_frobenius_chi", "fro")):
        err = np.abs(ds[name].values - ref[key])
        assert (err <= ds[name + "_bound"].values + slack).all(), name


@pytest.mark.parametrize("damping", [1e-6, 1e-3, 1.0])
@pytest.mark.parametrize("name", ["pixel_mlp", "flat_mlp", "small_cnn"])
def test_overlaps_match_dense_reference(x64, name, damping):
    apply, params = model(name)
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=damping, rtol=1e-10)
    ref = reference(apply, params, x, y, D4, damping)
    assert_chi_matches(ds, ref, 1e-8)
    assert_bounds_hold(ds, ref)
    assert ds.attrs["n_flagged"] == 0 and not ds.tolerance_not_met.values.any()
    assert ds.converged_u.values.all() and ds.converged_v.values.all()
    # Euclidean overlaps: plain dot products, exact to float64 round-off.
    np.testing.assert_allclose(ds.overlap_matrix_euclidean.values, ref["m_euc"], rtol=1e-12,
                               atol=1e-13 * np.abs(ref["m_euc"]).max())
    np.testing.assert_allclose(ds.overlap_cosine_euclidean.values, ref["cos_euc"], rtol=1e-12)
    np.testing.assert_allclose(ds.overlap_frobenius_euclidean.values, ref["fro_euc"], rtol=1e-12)
    # The identity element: u^e == v, so both cosines are 1 and the v-solves are reused.
    e = ds.sel(element="e")
    np.testing.assert_allclose(e.overlap_cosine_chi.values, 1.0, rtol=1e-14)
    np.testing.assert_allclose(e.overlap_cosine_euclidean.values, 1.0, rtol=1e-14)
    assert bool(e.reused_v_solves) and int(e.ggn_products_u) == 0
    # the group really moves the gradients (else the test above proves nothing)
    assert np.abs(ref["cos"][1:] - 1).max() > 1e-3


def test_lineax_cg_agrees_with_dense(x64):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=1e-3, rtol=1e-12,
                             solver="lineax", metric="chi")
    ref = reference(apply, params, x, y, D4, 1e-3)
    assert_chi_matches(ds, ref, 1e-8)
    assert_bounds_hold(ds, ref)
    assert "overlap_matrix_chi" in ds and ds.attrs["solver"] == "lineax"


def test_truncated_solves_are_flagged_and_still_bounded(x64):
    apply, params = model("flat_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=1e-3, rtol=1e-6, max_steps=3)
    ref = reference(apply, params, x, y, D4, 1e-3)
    assert ds.tolerance_not_met.values.all() and ds.attrs["n_flagged"] == 3 * 8
    assert not ds.converged_v.values.any() and (ds.cg_iterations_v.values == 3).all()
    err = np.abs(ds.overlap_cosine_chi.values - ref["cos"])
    assert err.max() > 1e-6  # the truncated answer really is wrong ...
    assert_bounds_hold(ds, ref)  # ... and the bounds say by how much, at most


def test_equivariant_model_has_unit_cosines(x64):
    apply_base, params = model("pixel_mlp")
    apply = d4_average(apply_base)
    x, y = transitions(jax.random.PRNGKey(2), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=1e-3, rtol=1e-8)
    np.testing.assert_allclose(ds.grad_norm_u.values, np.broadcast_to(ds.grad_norm_v.values, (8, 3)), rtol=1e-12)
    assert not ds.reused_v_solves.values[1:].any()  # u^g == v only to round-off: solved anew
    np.testing.assert_allclose(ds.overlap_cosine_euclidean.values, 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.overlap_cosine_chi.values, 1.0, atol=1e-8)
    assert (ds.overlap_cosine_chi_bound.values <= 1e-8).all()
    assert not ds.tolerance_not_met.values.any()
    # Control of the control: the un-averaged MLP mixes momentum components, not equivariant.
    plain = ov.compute_overlaps(apply_base, params, x, y, SIGMA, D4, metric="euclidean")
    assert np.abs(plain.overlap_cosine_euclidean.values[1:] - 1).max() > 1e-2


@pytest.mark.slow
def test_gcnn_has_unit_cosines(x64):
    from symgrad import models
    net = models.build("gcnn", "tiny", resolution=8)
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    apply = models.surrogate_apply(net.apply, SIGMA)
    x, y = transitions(jax.random.PRNGKey(3), n_samples=2, n=8)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=1e-3, rtol=1e-6)
    np.testing.assert_allclose(ds.overlap_cosine_euclidean.values, 1.0, atol=1e-10)
    np.testing.assert_allclose(ds.overlap_cosine_chi.values, 1.0, atol=1e-6)
    assert not ds.tolerance_not_met.values.any()


def test_interrupted_run_resumes_to_the_same_result(x64, tmp_path, monkeypatch):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    kw = dict(damping=1e-3, rtol=1e-8)
    full = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, **kw)
    part = tmp_path / "r.nc.partial"
    with pytest.raises(ov.OverlapInterrupted):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, partial_dir=part, stop_after=3, **kw)
    assert sorted(p.name for p in part.glob("element_*.nc")) == [f"element_{k}.nc" for k in range(3)]
    assert (part / "v_solves.npz").exists()

    calls = []
    real = ov.chi_solve
    monkeypatch.setattr(ov, "chi_solve", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, partial_dir=part, **kw)
    assert len(calls) == 5  # the v-solves and elements 0-2 came from disk
    for name in full.data_vars:
        np.testing.assert_array_equal(resumed[name].values, full[name].values, err_msg=name)
    assert resumed.attrs["ggn_products"] == full.attrs["ggn_products"]

    # Other inputs must not silently reuse these partial results.
    with pytest.raises(SymgradError, match="different inputs"):
        ov.compute_overlaps(apply, params, x, y + 1, SIGMA, D4, partial_dir=part, **kw)
    ov.remove_partials(part)
    assert not part.exists()


def test_result_file_round_trip_and_coordinates(x64, tmp_path):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=1e-3, rtol=1e-6,
                             attrs={"data_file": "d.nc"})
    assert ds.overlap_matrix_chi.dims == ("element", "sample_i", "sample_j")
    assert ds.overlap_cosine_chi.dims == ("element", "sample")
    assert list(ds.element.values) == list(D4.elements)
    for name, var in ds.data_vars.items():
        assert "long_name" in var.attrs and "units" in var.attrs, name
    path = write_netcdf_atomic(ds, tmp_path / "r.nc")
    with xr.open_dataset(path) as back:
        assert back.tolerance_not_met.dtype == bool and back.reused_v_solves.dtype == bool
        np.testing.assert_array_equal(back.overlap_matrix_chi.values, ds.overlap_matrix_chi.values)
        assert back.attrs["data_file"] == "d.nc" and back.attrs["rtol"] == 1e-6
    shifts = ov.compute_overlaps(apply, params, x, y, SIGMA, named_group("translate-x", 4),
                                 metric="euclidean")
    assert shifts.element.dtype.kind == "i" and "overlap_matrix_chi" not in shifts
    # a per-pixel model commutes with shifts
    np.testing.assert_allclose(shifts.overlap_cosine_euclidean.values, 1.0, atol=1e-12)
    scales = ov.compute_overlaps(apply, params, x, y, SIGMA, named_group("scale"), metric="euclidean")
    assert scales.element.dtype.kind == "f"


def test_user_errors(x64):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    with pytest.raises(SymgradError, match="damping"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, damping=0.0)
    with pytest.raises(SymgradError, match="metric"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, metric="cosine")
    with pytest.raises(SymgradError, match="output_hessian"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, loss_fn=lambda p, t: smse(p, t, SIGMA))
