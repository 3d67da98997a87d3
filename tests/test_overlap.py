"""The overlap engine against dense linear algebra, plus controls, certification and resume.

Every solver (``block``, the default; ``cg``, the baseline; ``dense``, the exact reference)
must reproduce the independent dense float64 reference below.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from jax.flatten_util import ravel_pytree

from symgrad.diagnostics import OverlapConfig
from symgrad.diagnostics import overlap as ov
from symgrad import names
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


@pytest.mark.parametrize("solver", names.SOLVERS)
@pytest.mark.parametrize("damping", [1e-6, 1e-3, 1.0])
@pytest.mark.parametrize("name", ["pixel_mlp", "flat_mlp", "small_cnn"])
def test_overlaps_match_dense_reference(x64, name, damping, solver):
    apply, params = model(name)
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(damping=damping, rtol=1e-10, solver=solver))
    ref = reference(apply, params, x, y, D4, damping)
    assert_chi_matches(ds, ref, 1e-8)
    assert_bounds_hold(ds, ref)
    # Every value is certified to 1e-6, the study's rtol; some Frobenius overlaps no better,
    # since the rounding under every bound (about delta / lambda relative, docs/overlap.md 3.5)
    # is amplified by a small ||M||_F: those are flagged at rtol 1e-10, as they must be.
    assert ds.attrs["max_relative_bound"] <= 1e-6
    # Euclidean overlaps: plain dot products, exact to float64 round-off.
    np.testing.assert_allclose(ds.overlap_matrix_euclidean.values, ref["m_euc"], rtol=1e-12,
                               atol=1e-13 * np.abs(ref["m_euc"]).max())
    np.testing.assert_allclose(ds.overlap_cosine_euclidean.values, ref["cos_euc"], rtol=1e-12)
    np.testing.assert_allclose(ds.overlap_frobenius_euclidean.values, ref["fro_euc"], rtol=1e-12)
    # The identity element: u^e == v, so both cosines are 1 and the v-solves are reused.
    e = ds.sel(element="e")
    np.testing.assert_allclose(e.overlap_cosine_chi.values, 1.0, rtol=1e-14)
    np.testing.assert_allclose(e.overlap_cosine_euclidean.values, 1.0, rtol=1e-14)
    assert bool(e.reused_v_solves) and ds.attrs["solver"] == solver
    # the group really moves the gradients (else the test above proves nothing)
    assert np.abs(ref["cos"][1:] - 1).max() > 1e-3
    # the certified bound never exceeds the residual bound, which holds in floating point
    # (chi_uu_bound also carries the rounding of the forms, at most 1e-6 relative here)
    assert (ds.chi_uu_bound.values <= ds.residual_bound_u.values + 1e-6 * np.abs(ds.chi_uu.values)).all()


@pytest.mark.parametrize("solver,limit", [("block", 2), ("cg", 3)])
def test_truncated_solves_are_flagged_and_still_bounded(x64, solver, limit):
    apply, params = model("flat_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4,
        OverlapConfig(damping=1e-3, rtol=1e-6, solver=solver, max_iterations=limit))
    ref = reference(apply, params, x, y, D4, 1e-3)
    assert ds.tolerance_not_met.values.all() and ds.attrs["n_flagged"] == 3 * 8
    assert not ds.converged_v.values.any() and (ds.iterations_v.values == limit).all()
    err = np.abs(ds.overlap_cosine_chi.values - ref["cos"])
    assert err.max() > 1e-6  # the truncated answer really is wrong ...
    assert_bounds_hold(ds, ref)  # ... and the bounds say by how much, at most


def test_gauss_radau_bounds_hold_along_the_block_iteration(x64):
    """Block Gauss estimates and Gauss-Radau bounds at every step against the dense truth:
    Gauss from below, Gauss-Radau from above, and the error matrix bounded entrywise."""
    from symgrad.diagnostics.ggn import GaussNewtonBlocks
    from symgrad.diagnostics.gradients import per_example_gradients
    from symgrad.diagnostics.solvers import BlockLanczos

    apply, params = model("small_cnn")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    lam = 1e-4
    rhs = jnp.concatenate([per_example_gradients(apply, params, D4.act(g, x), D4.act(g, y), SIGMA)
                           for g in D4.elements[:3]])
    a, cond = dense_damped_ggn(apply, params, x, SIGMA, lam)
    exact = np.asarray(rhs) @ np.linalg.solve(a, np.asarray(rhs).T)
    seen = []

    class Record:
        rtol = 1e-30

        def stopping(self, safety):  # the solver builds its rule from its targets: this one records
            return self

        def __call__(self, gram, e, rounding=None):
            err = exact - gram
            slack = 8 * cond * np.finfo(float).eps * np.abs(np.diagonal(exact))
            assert (np.diagonal(err) >= -slack).all()  # Gauss is a lower bound
            assert (np.diagonal(err) <= e + slack).all()  # Gauss-Radau an upper bound
            seen.append(np.max(e / np.diagonal(exact)))
            return False, 2.0

        def certified(self, gram, e, rounding=None):
            return False

    op = GaussNewtonBlocks(apply, params, x, SIGMA, damping=lam)
    sol = BlockLanczos(max_steps=12).solve(op, rhs, Record())
    assert len(seen) == 12 and seen[-1] < 1e-3 * seen[0]  # the bounds tighten as the space grows
    assert (sol.error_bound <= sol.residual_bound).all()


def test_null_space_share_against_the_eigen_decomposition(x64):
    apply, params = model("small_cnn")  # 442 parameters, 192 outputs: G has a null space
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    lam = 1e-6
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(damping=lam, rtol=1e-8))
    # reference: lambda ||A^-1 b||^2 / b^T A^-1 b in the eigenbasis of the dense G, and the
    # plain share of b^T A^-1 b from eigenvalues of G below 1e-8 (the null space proper)
    flat, unravel = ravel_pytree(params)
    a, _ = dense_damped_ggn(apply, params, x, SIGMA, lam)
    theta, q = np.linalg.eigh(a - lam * np.eye(len(a)))
    grad = jax.jacrev(lambda p, xs, ys: smse(apply(unravel(p), xs), ys, SIGMA))
    for k, g in enumerate(D4.elements):
        c = q.T @ np.asarray(grad(flat, D4.act(g, x), D4.act(g, y))).T  # (P, N)
        chi = np.sum(c**2 / (theta + lam)[:, None], axis=0)
        soft = np.sum(c**2 * lam / (theta + lam)[:, None] ** 2, axis=0) / chi
        hard = np.sum((c**2 / (theta + lam)[:, None])[theta < 1e-8], axis=0) / chi
        np.testing.assert_allclose(ds.null_space_share_u.values[k], soft, rtol=1e-6)
        np.testing.assert_allclose(soft, hard, atol=1e-3)  # this spectrum has a gap at lambda
    assert ds.null_space_share_u.values[1:].min() > 0.5  # u^g leaves the range of G ...
    assert ds.null_space_share_v.values.max() < 1e-3  # ... while v lies in it (x is the curvature batch)


def test_float32_parameters_are_solved_in_float64_by_default(x64):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    ds = ov.compute_overlaps(apply, p32, x.astype(jnp.float32), y.astype(jnp.float32), SIGMA, D4,
        OverlapConfig(damping=1e-6, rtol=1e-6))
    assert ds.attrs["dtype"] == "float64" and ds.attrs["n_flagged"] == 0
    low = ov.compute_overlaps(apply, p32, x, y, SIGMA, D4, OverlapConfig(damping=1e-6, rtol=1e-8, precision="float32"))
    assert low.attrs["dtype"] == "float32"


def test_equivariant_model_has_unit_cosines(x64):
    apply_base, params = model("pixel_mlp")
    apply = d4_average(apply_base)
    x, y = transitions(jax.random.PRNGKey(2), n_samples=3)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(damping=1e-3, rtol=1e-8))
    np.testing.assert_allclose(ds.grad_norm_u.values, np.broadcast_to(ds.grad_norm_v.values, (8, 3)), rtol=1e-12)
    assert not ds.reused_v_solves.values[1:].any()  # u^g == v only to round-off: solved anew
    np.testing.assert_allclose(ds.overlap_cosine_euclidean.values, 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.overlap_cosine_chi.values, 1.0, atol=1e-8)
    assert (ds.overlap_cosine_chi_bound.values <= 1e-8).all()
    assert not ds.tolerance_not_met.values.any()
    # Control of the control: the un-averaged MLP mixes momentum components, not equivariant.
    plain = ov.compute_overlaps(apply_base, params, x, y, SIGMA, D4, OverlapConfig(metric="euclidean"))
    assert np.abs(plain.overlap_cosine_euclidean.values[1:] - 1).max() > 1e-2


@pytest.mark.slow
def test_gcnn_has_unit_cosines(x64):
    from symgrad import models
    net = models.build("gcnn", "tiny", resolution=8)
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    apply = models.surrogate_apply(net.apply, SIGMA)
    x, y = transitions(jax.random.PRNGKey(3), n_samples=2, n=8)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(damping=1e-3, rtol=1e-6))
    np.testing.assert_allclose(ds.overlap_cosine_euclidean.values, 1.0, atol=1e-10)
    np.testing.assert_allclose(ds.overlap_cosine_chi.values, 1.0, atol=1e-6)
    assert not ds.tolerance_not_met.values.any()


@pytest.mark.parametrize("solver", ["block", "cg"])
def test_interrupted_run_resumes_to_the_same_result(x64, tmp_path, monkeypatch, solver):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    # chunks of 6 right-hand sides: (v, e, r), (r2, r3), (s, rs), (r2s, r3s) for block;
    # the baseline always solves v, then one element at a time
    config = OverlapConfig(damping=1e-3, rtol=1e-8, solver=solver, rhs_chunk=6)
    full = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config)
    n_chunks = 4 if solver == "block" else 8
    assert full.attrs["rhs_chunks"] == n_chunks
    part = tmp_path / "r.nc.partial"
    with pytest.raises(ov.OverlapInterrupted):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config, partial_dir=part, stop_after=2)
    assert sorted(p.name for p in part.glob("chunk_*.npz")) == ["chunk_0.npz", "chunk_1.npz"]

    calls = []
    solver_class = type(config.chi_solver())
    real = solver_class.solve
    monkeypatch.setattr(solver_class, "solve", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config, partial_dir=part)
    assert len(calls) == n_chunks - 2  # chunks 0 and 1 came from disk
    for name in full.data_vars:
        np.testing.assert_array_equal(resumed[name].values, full[name].values, err_msg=name)
    assert resumed.attrs["ggn_products"] == full.attrs["ggn_products"]

    # Other inputs must not silently reuse these partial results.
    with pytest.raises(SymgradError, match="different inputs"):
        ov.compute_overlaps(apply, params, x, y + 1, SIGMA, D4, config, partial_dir=part)
    ov.remove_partials(part)
    assert not part.exists()


@pytest.mark.parametrize("rhs_chunk", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_chunks_smaller_than_two_element_blocks_split_the_rows(x64, tmp_path, rhs_chunk):
    # Below 2 N columns the plan solves the v's first (in chunks of their own when N does
    # not fit) and splits every element's rows across chunks; the values still match the
    # dense reference within their bounds, and a resumed run gives the same result.
    apply, params = model("small_cnn")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    config = OverlapConfig(damping=1e-3, rtol=1e-8, rhs_chunk=rhs_chunk)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config)
    plan = json.loads(ds.attrs["memory_plan"])
    assert plan["columns_per_chunk"] == rhs_chunk and max(plan["chunk_columns"]) <= rhs_chunk
    assert ds.attrs["rhs_chunks"] == plan["chunks"] == -(-3 // rhs_chunk) + -(-7 * 3 // rhs_chunk)
    ref = reference(apply, params, x, y, D4, 1e-3)
    assert_chi_matches(ds, ref, 1e-7)
    assert_bounds_hold(ds, ref)
    assert int(ds.attrs["n_flagged"]) == 0
    part = tmp_path / "r.nc.partial"
    with pytest.raises(ov.OverlapInterrupted):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config, partial_dir=part, stop_after=3)
    resumed = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config, partial_dir=part)
    for name in ds.data_vars:
        np.testing.assert_array_equal(resumed[name].values, ds[name].values, err_msg=name)


def test_result_file_round_trip_and_coordinates(x64, tmp_path):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4,
        OverlapConfig(damping=1e-3, rtol=1e-6), attrs={"data_file": "d.nc"})
    assert ds.ggn_top_eigenvalues.dims == ("eigen_index",) and ds.effective_dimension.dims == ("damping_grid",)
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
        OverlapConfig(metric="euclidean"))
    assert shifts.element.dtype.kind == "i" and "overlap_matrix_chi" not in shifts
    # a per-pixel model commutes with shifts
    np.testing.assert_allclose(shifts.overlap_cosine_euclidean.values, 1.0, atol=1e-12)
    scales = ov.compute_overlaps(apply, params, x, y, SIGMA, named_group("scale"), OverlapConfig(metric="euclidean"))
    assert scales.element.dtype.kind == "f"


def test_user_errors(x64):
    apply, params = model("pixel_mlp")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    with pytest.raises(SymgradError, match="damping"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(damping=0.0))
    with pytest.raises(SymgradError, match="metric"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(metric="cosine"))
    with pytest.raises(SymgradError, match="output_hessian"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, loss_fn=lambda p, t: smse(p, t, SIGMA))
    with pytest.raises(SymgradError, match="solver"):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(solver="auto"))
    with pytest.raises(SymgradError, match="dense"):  # never formed for a model above the limit
        from symgrad.diagnostics.ggn import GaussNewtonBlocks
        from symgrad.diagnostics.solvers import Dense, Targets
        op = GaussNewtonBlocks(apply, params, x, SIGMA, damping=1e-3)
        Dense(max_params=10).solve(op, jnp.ones((1, op.n_params)), Targets(1e-6))


@pytest.mark.parametrize("solver", ["block", "cg"])
def test_chi_solve_certifies_every_quadratic_form(x64, solver):
    apply, params = model("flat_mlp")
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=3)
    rhs = jax.random.normal(jax.random.PRNGKey(5), (6, ravel_pytree(params)[0].size))
    a, _ = dense_damped_ggn(apply, params, x, SIGMA, 1e-4)
    exact = np.asarray(rhs) @ np.linalg.solve(a, np.asarray(rhs).T)
    sol = ov.chi_solve(apply, params, x, SIGMA, rhs, OverlapConfig(damping=1e-4, rtol=1e-9, solver=solver))
    quad = np.diagonal(exact)
    assert (sol.error_bound / quad <= 1e-9).all() and sol.converged.all()
    assert (np.abs(np.diagonal(sol.gram) - quad) <= sol.error_bound + 1e-12 * quad).all()
    # e bounds exactly what it claims: the energy norm of each solution's error
    err = np.asarray(sol.solution) - np.linalg.solve(a, np.asarray(rhs).T).T
    energy = np.einsum("kp,pq,kq->k", err, a, err)
    assert (energy <= sol.error_bound * (1 + 1e-6) + 1e-12 * quad).all()
    assert sol.ggn_products > 0 and sol.residual.shape == rhs.shape


class _DiagonalOperator:
    """``lambda I + G`` with G diagonal: a ``ChiOperator`` written from the protocol alone."""

    def __init__(self, g, damping):
        self.damping, self.dtype = float(damping), jnp.float64
        self._a = jnp.asarray(g + damping)
        self.n_params, self.products = int(self._a.shape[0]), 0

    def __call__(self, block):
        self.products += int(block.shape[0])
        return self._a * block

    def rounding(self):  # one rounding per entry of a * z
        return float(np.finfo(np.float64).eps * np.max(np.abs(np.asarray(self._a))))

    def loop(self, body, *args):
        outputs, used = jax.jit(lambda a, *xs: body(lambda blk: a * blk, *xs))(self._a, *args)
        self.products += int(used)
        return outputs


@pytest.mark.parametrize("solver", ["block", "cg"])
def test_solve_overlaps_on_any_chi_operator(x64, solver):
    """The engine sees only the ``ChiOperator`` protocol: on a diagonal operator its values
    equal the exact ones within their bounds, and its product count is the operator's own."""
    rng = np.random.default_rng(0)
    n, p, lam = 3, 60, 1e-3
    g = np.concatenate([np.logspace(0, -4, p - 10), np.zeros(10)])  # a null space, as in the models
    v = rng.normal(size=(n, p))
    us = [rng.normal(size=(n, p)) for _ in range(3)]
    op = _DiagonalOperator(g, lam)
    config = OverlapConfig(damping=lam, rtol=1e-8, solver=solver)
    results, v_side, log, chunks = ov.solve_overlaps(
        op, jnp.asarray(v), lambda k: jnp.asarray(us[k - 1]), [True, False, False, False], ["e", "a", "b", "c"],
        solver=config.chi_solver(), rtol=config.rtol)
    a_inv = 1.0 / (g + lam)
    exact_vv = np.einsum("ip,p,ip->i", v, a_inv, v)
    assert (np.abs(v_side["chi_vv"] - exact_vv) <= v_side["error_bound_v"] + 1e-12 * exact_vv).all()
    for k in (1, 2, 3):
        m = (us[k - 1] * a_inv) @ v.T
        bound = np.sqrt(np.outer(results[k]["error_bound_u"], v_side["error_bound_v"]))
        assert (np.abs(results[k]["overlap_matrix_chi"] - m) <= bound + 1e-12 * np.abs(m).max()).all()
        assert results[k]["converged_u"].all()
    assert sum(entry["ggn_products"] for entry in log) == op.products > 0
    assert all(entry["result"] == "certified" for entry in log)


def test_deflation_is_the_schur_complement_off_the_recycled_space(x64):
    """``Deflation`` against dense algebra, on the space a solve recycles: Z are the Ritz
    vectors of a short block Lanczos run's kept vectors, AZ combined from the products that run
    computed (no new product). On Z-perp, S is symmetric with lambda_min(S) >= lambda and S^-1
    equals the Z-perp block of A^-1; the split of A^-1 b (coarse part plus S-solve) is exact,
    whatever Z is (here poorly converged Ritz vectors, not eigenvectors); and the estimated
    rounding covers S's actual deviation from the exact Schur complement."""
    from symgrad.diagnostics.solvers._deflation import RITZ_FLOOR, Deflation, Recycle
    from symgrad.diagnostics.solvers._lanczos import BlockLanczosProcess

    rng = np.random.default_rng(0)
    p, lam = 40, 1e-3
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    g = (q * np.concatenate([np.logspace(1, -5, p - 8), np.zeros(8)])) @ q.T  # a null space, as in the models

    class Dense:
        def __init__(self, damping):
            self.damping, self.dtype, self.n_params, self.products = float(damping), jnp.float64, p, 0
            self.a = jnp.asarray(g + damping * np.eye(p))

        def __call__(self, block):
            self.products += int(block.shape[0])
            return block @ self.a

        def rounding(self):
            return float(np.finfo(np.float64).eps * np.abs(g).max() * p)

    op = Dense(lam)
    lanczos = BlockLanczosProcess(op, jnp.asarray(rng.normal(size=(2, p))), basis_bytes=8 * p * 8, rank_tol=1e-12,
                                  keep_products=8)
    for _ in range(5):
        lanczos.step()
    keep = Recycle(8)
    keep.collect(lanczos)
    assert [int(b.shape[0]) for b in keep.product_pages] == [2, 2, 2, 2]  # the kept vectors' products, as computed
    used = op.products
    defl, theta = keep.space(op)
    assert op.products == used  # no product spent on the space
    z, k = np.asarray(defl.z), defl.k
    assert 0 < k <= 8 and (theta > RITZ_FLOOR * lam).all()
    assert np.allclose(z @ z.T, np.eye(k), atol=1e-12)
    a = np.asarray(op.a)
    np.testing.assert_allclose(np.asarray(defl.az), z @ a, atol=1e-12 * np.abs(a).max())  # AZ from the kept products
    ritz_residual = np.linalg.norm(z @ a - theta[:, None] * z, axis=1)
    assert ritz_residual.max() > 1e-3  # poorly converged: the identities below do not lean on eigenvectors
    w = np.linalg.svd(np.eye(p) - z.T @ z)[0][:, :p - k]  # a basis of Z-perp
    s = w.T @ np.asarray(defl(jnp.asarray(w.T))).T
    assert np.allclose(s, s.T, atol=1e-10 * np.abs(s).max())
    assert np.linalg.eigvalsh(0.5 * (s + s.T)).min() >= lam * (1 - 1e-8)
    np.testing.assert_allclose(np.linalg.inv(s), w.T @ np.linalg.inv(a) @ w, rtol=1e-7, atol=1e-9 / lam)
    exact_s = w.T @ (a - a @ z.T @ np.linalg.solve(z @ a @ z.T, z @ a)) @ w
    assert np.linalg.norm(s - exact_s, 2) <= defl.rounding()
    b = rng.normal(size=(3, p))
    c, coarse = defl.prepare(jnp.asarray(b))
    y = w @ np.linalg.solve(s, w.T @ np.asarray(c).T)  # the exact S-solve, in Z-perp
    x = np.asarray(defl.recover(jnp.asarray(b), jnp.asarray(y.T)))
    np.testing.assert_allclose(x, np.linalg.solve(a, b.T).T, rtol=1e-8, atol=1e-10 * np.abs(x).max())
    forms = b @ np.linalg.solve(a, b.T)
    np.testing.assert_allclose(coarse + np.asarray(c) @ y, forms, rtol=1e-8)
    assert defl.rounding() >= op.rounding() > 0


def test_a_run_resumed_after_chunk_0_recycles_chunk_0_again(x64, tmp_path, monkeypatch):
    # The deflation space lives in memory only: a run stopped after chunk 0 solves chunk 0
    # once more for its Lanczos vectors (its values come from disk) and counts those products
    # as the space's. The resumed values match the dense reference within their bounds.
    apply, params = model("small_cnn")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    config = OverlapConfig(damping=1e-6, rtol=1e-6, rhs_chunk=6, deflation_vectors=32, basis_memory=0.0)
    part = tmp_path / "r.nc.partial"
    with pytest.raises(ov.OverlapInterrupted):
        ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config, partial_dir=part, stop_after=1)
    calls = []
    solver_class = type(config.chi_solver())
    real = solver_class.solve
    monkeypatch.setattr(solver_class, "solve", lambda *a, **k: calls.append("recycle" in k) or real(*a, **k))
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config, partial_dir=part)
    log = json.loads(ds.attrs["solver_chunks"])
    assert calls[0] is True and len(calls) == len(log)  # chunk 0 again, then chunks 1.. (chunk 0 from disk)
    assert log[1]["recycled_again"] and log[1]["deflation_ggn_products"] >= log[0]["ggn_products"]
    assert ds.attrs["deflation_vectors"] == log[1]["recycled_vectors"] > 0
    assert all(c["deflation_vectors"] == ds.attrs["deflation_vectors"] for c in log[1:])
    ref = reference(apply, params, x, y, D4, 1e-6)
    assert_chi_matches(ds, ref, 1e-6)
    assert_bounds_hold(ds, ref)
    assert int(ds.attrs["n_flagged"]) == 0


@pytest.mark.parametrize("rhs_chunk", [6, 2])
def test_deflated_solves_match_the_dense_reference(x64, rhs_chunk):
    # The default where the basis cannot be stored: chunk 0 keeps its Lanczos vectors and
    # their products, and their Ritz vectors are deflated from every later chunk's solve (here
    # forced, with no stored basis). The values match the dense float64 reference within their
    # bounds at lambda 1e-6, whole elements per chunk and split by rows.
    apply, params = model("small_cnn")
    x, y = transitions(jax.random.PRNGKey(1), n_samples=3)
    config = OverlapConfig(damping=1e-6, rtol=1e-6, rhs_chunk=rhs_chunk, deflation_vectors=32, basis_memory=0.0)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config)
    kept = ds.attrs["deflation_vectors"]
    assert 0 < kept <= 32 and ds.attrs["deflation_planned_vectors"] == 32 and ds.attrs["deflation_ggn_products"] > 0
    assert json.loads(ds.attrs["memory_plan"])["deflation_vectors"] == 32
    log = json.loads(ds.attrs["solver_chunks"])
    assert log[0]["deflation_vectors"] == 0 and log[0]["recycled_vectors"] == kept
    assert len(log) > 2 and all(c["deflation_vectors"] == kept for c in log[1:])
    ref = reference(apply, params, x, y, D4, 1e-6)
    assert_chi_matches(ds, ref, 1e-6)
    assert_bounds_hold(ds, ref)
    assert int(ds.attrs["n_flagged"]) == 0
