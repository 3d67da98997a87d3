"""No false certificate: every value that is not flagged lies within its bound, against a
dense reference refined to round-off, in every precision and every way a solve can end.

The reference: the matrix of the operator the engine evaluates, formed column by column in
float64 (``dense_matrix``), solved by LU and refined three times with residuals in long
double, so that its own error is far below the engine's bounds. The model: a two-layer
periodic CNN of 588 parameters on four 8x8 states (1,024 outputs), small enough that the
block solver reaches an invariant subspace (the case that certified values to 1e-17
relative while they were off by 1e-13).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from symgrad import names
from symgrad.diagnostics import OverlapConfig
from symgrad.diagnostics import overlap as ov
from symgrad.diagnostics.ggn import GaussNewtonBlocks
from symgrad.diagnostics.gradients import per_example_gradients
from symgrad.diagnostics.solvers import _block
from symgrad.diagnostics.solvers._dense import dense_matrix
from symgrad.groups import named_group
from symgrad.io import decode_attr
from test_overlap_helpers import SIGMA, small_cnn, transitions

D4 = named_group("d4")
N = 4


def make_problem(width):
    apply, params = small_cnn(jax.random.PRNGKey(0), n=8, width=width)
    x, y = transitions(jax.random.PRNGKey(1), n_samples=N, n=8)
    return apply, params, np.asarray(x), np.asarray(y)


@pytest.fixture(scope="module")
def problem():
    return make_problem(8)  # 588 parameters


def refined_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` by LU and iterative refinement with long-double residuals."""
    x = np.linalg.solve(a, b)
    a_long, b_long = a.astype(np.longdouble), b.astype(np.longdouble)
    for _ in range(3):
        r = (b_long - a_long @ x.astype(np.longdouble)).astype(np.float64)
        x = x + np.linalg.solve(a, r)
    return x


def reference(apply, params, x, y, damping, dtype, curvature_samples=None):
    """Exact chi values of the gradients the engine computes (in ``dtype``), for the model and
    curvature batch as cast to ``dtype``, in refined float64."""
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        xs, ys = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        grads = lambda a, b: np.asarray(per_example_gradients(apply, p, a, b, jnp.asarray(SIGMA, dtype)), np.float64)  # noqa: E731
        v = grads(xs, ys)
        us = [grads(D4.act(g, xs), D4.act(g, ys)) for g in D4.elements]
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p)
        x_curv = jnp.asarray(xs, jnp.float64)[:curvature_samples]
        a = dense_matrix(GaussNewtonBlocks(apply, p64, x_curv, SIGMA, damping=damping))
    chi = refined_solve(a, np.concatenate([v] + us).T)
    chi_v = chi[:, :N]
    vv = np.einsum("pi,pi->i", v.T, chi_v)
    m = np.stack([u @ chi_v for u in us])
    uu = np.stack([np.einsum("pi,pi->i", u.T, chi[:, N * (k + 1):N * (k + 2)]) for k, u in enumerate(us)])
    return {"m": m, "uu": uu, "vv": vv, "cos": np.diagonal(m, axis1=1, axis2=2) / np.sqrt(uu * vv),
            "fro": np.diagonal(m, axis1=1, axis2=2) / np.linalg.norm(m, axis=(1, 2))[:, None]}


def chunks_of(ds) -> list[dict]:
    return decode_attr(ds.attrs["solver_chunks"])


def assert_unflagged_values_within_bounds(ds, ref):
    """The promise of a certificate, with no slack: a value that is not flagged lies within its bound."""
    ok = ~ds.tolerance_not_met.values  # (element, sample): every value of (g, i) certified
    assert (np.abs(ds.chi_vv.values - ref["vv"]) <= ds.chi_vv_bound.values).all() or ok.sum() == 0
    for name, key in (("chi_uu", "uu"), ("overlap_cosine_chi", "cos"), ("overlap_frobenius_chi", "fro")):
        err = np.abs(ds[name].values - ref[key])
        outside = (err > ds[f"{name}_bound"].values) & ok
        assert not outside.any(), f"{name}: {int(outside.sum())} certified values outside their bounds"
    err = np.abs(ds.overlap_matrix_chi.values - ref["m"])
    outside = (err > ds.overlap_matrix_chi_bound.values) & ok[:, :, None]
    assert not outside.any(), f"overlap_matrix_chi: {int(outside.sum())} certified entries outside their bounds"


@pytest.mark.parametrize("solver,width", [
    pytest.param(solver, width, marks=[pytest.mark.slow] if (solver, width) == ("cg", 8) else [])
    for solver in names.SOLVERS for width in (2, 8)])  # cg on 588 parameters: 75 s of over-solving
def test_no_certified_value_is_off_by_more_than_its_bound(x64, solver, width):
    """Width 2 (150 parameters): the block solver exhausts the space (an invariant subspace,
    whose Gauss-Radau bound is 0 in exact arithmetic); width 8 (588): it stops on its bounds."""
    apply, params, x, y = make_problem(width)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4,
                             OverlapConfig(damping=1e-6, rtol=1e-6, solver=solver, probe_vectors=0))
    ref = reference(apply, params, x, y, 1e-6, jnp.float64)
    assert_unflagged_values_within_bounds(ds, ref)
    assert ds.attrs["n_flagged"] == 0  # the values are good: float64 certifies them at 1e-6
    # no bound below the rounding of the float64 forms that computed the value (two-level
    # sums of P terms: at least 2 sqrt(P) eps of the magnitudes, so well above one ulp)
    p = ravel_pytree(params)[0].size
    assert (ds.chi_uu_bound.values >= np.sqrt(p) * np.finfo(np.float64).eps * np.abs(ds.chi_uu.values)).all()
    if solver == "block":
        assert all(c["invariant_subspace"] for c in chunks_of(ds)) == (width == 2)


def test_a_solve_cut_short_is_flagged_and_bounded(x64, problem):
    apply, params, x, y = problem
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4,
                             OverlapConfig(damping=1e-6, rtol=1e-6, max_iterations=3, probe_vectors=0))
    ref = reference(apply, params, x, y, 1e-6, jnp.float64)
    assert ds.tolerance_not_met.values.all()
    for name, key in (("chi_uu", "uu"), ("overlap_cosine_chi", "cos")):
        assert (np.abs(ds[name].values - ref[key]) <= ds[f"{name}_bound"].values).all(), name


def test_float32_is_certified_only_where_its_rounding_allows(x64, problem):
    """At lambda = 1e-6 the float32 operator's rounding (about 1e-6 of ||G|| ~ 100) exceeds
    lambda: nothing can be certified, the solve must say so and stop, not run to its step
    limit. At lambda = 1e-1 what it certifies must hold against the refined reference."""
    apply, params, x, y = problem
    tiny = ov.compute_overlaps(apply, params, x, y, SIGMA, D4,
                               OverlapConfig(damping=1e-6, rtol=1e-6, precision="float32", probe_vectors=0,
                                             max_iterations=2000))
    assert tiny.tolerance_not_met.values.all()
    chunks = chunks_of(tiny)
    assert all(c["result"] in ("stagnated", "not_certified") for c in chunks), chunks
    assert all(c["block_steps"] < 500 for c in chunks)
    assert float(tiny.attrs["operator_rounding"]) > 1e-6 / 2  # the reason: stated with the result

    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4,
                             OverlapConfig(damping=1e-1, rtol=1e-3, precision="float32", probe_vectors=0))
    ref = reference(apply, params, x, y, 1e-1, jnp.float32)
    assert_unflagged_values_within_bounds(ds, ref)
    assert (~ds.tolerance_not_met.values).sum() > 0  # something was certified: the check is not empty


def test_a_gauss_radau_breakdown_falls_back_to_the_residual_bound(x64, problem, monkeypatch):
    """A node mu above the smallest eigenvalue (here forced: 2 lambda, with a null space of G
    in the curvature batch of one state) makes the Gauss-Radau forms meaningless: negative, or
    from an M_k that is not positive definite. That is a breakdown, never a bound of 0."""
    apply, params, x, y = problem
    monkeypatch.setattr(_block, "radau_shift", lambda damping, rounding: 2 * damping, raising=False)
    monkeypatch.setattr(_block, "MU_FRACTION", 2.0, raising=False)  # the same node for an engine without it
    config = OverlapConfig(damping=1e-4, rtol=1e-6, curvature_samples=1, probe_vectors=0)
    ds = ov.compute_overlaps(apply, params, x, y, SIGMA, D4, config)
    ref = reference(apply, params, x, y, 1e-4, jnp.float64, curvature_samples=1)
    assert_unflagged_values_within_bounds(ds, ref)
    chunks = chunks_of(ds)
    assert sum(c.get("gauss_radau_breakdowns", 0) for c in chunks) >= 1


def test_the_operator_rounding_estimate_covers_the_rounding_it_estimates(x64, problem):
    apply, params, x, _ = problem
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    g = dense_matrix(GaussNewtonBlocks(apply, p64, jnp.asarray(x, jnp.float64), SIGMA))
    z = np.random.default_rng(7).normal(size=(6, g.shape[0]))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    for dtype in (jnp.float64, jnp.float32):
        op = GaussNewtonBlocks(apply, jax.tree.map(lambda a: jnp.asarray(a, dtype), p64), jnp.asarray(x, dtype), SIGMA)
        zc = np.asarray(jnp.asarray(z, dtype), np.float64)
        true = np.linalg.norm(np.asarray(op(jnp.asarray(zc, dtype)), np.float64) - zc @ g, axis=1).max()
        delta = op.rounding()
        assert true <= delta <= 1000 * true, (np.dtype(dtype).name, true, delta)
