"""The matrix-free Gauss-Newton operator against the dense J^T H J."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symgrad.diagnostics.ggn import GaussNewtonBlocks
from symgrad.diagnostics.solvers._dense import dense_matrix
from test_overlap_helpers import SIGMA, dense_ggn, flat_mlp, pixel_mlp, small_cnn, transitions


@pytest.mark.parametrize("model", [pixel_mlp, flat_mlp, small_cnn])
def test_ggn_products_match_dense(x64, model):
    apply, params = model(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=3)
    g = dense_ggn(apply, params, x, SIGMA)
    p = g.shape[0]
    vs = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (4, p)))
    op = GaussNewtonBlocks(apply, params, x, SIGMA)
    np.testing.assert_allclose(np.asarray(op(jnp.asarray(vs))), vs @ g, rtol=1e-11, atol=1e-13 * np.abs(g).max())
    one = np.asarray(op(jnp.asarray(vs[:1])))[0]  # one product (a block of one row)
    np.testing.assert_allclose(one, g @ vs[0], rtol=1e-11, atol=1e-13 * np.abs(g).max())
    assert op.products == 5


def test_operator_is_symmetric_psd_and_damped(x64):
    apply, params = pixel_mlp(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=2)
    g = dense_ggn(apply, params, x, SIGMA)
    formed = dense_matrix(GaussNewtonBlocks(apply, params, x, SIGMA))
    np.testing.assert_allclose(formed, g, rtol=1e-11, atol=1e-14)
    damped = dense_matrix(GaussNewtonBlocks(apply, params, x, SIGMA, damping=0.25))
    np.testing.assert_allclose(damped, g + 0.25 * np.eye(len(g)), rtol=1e-11, atol=1e-14)
    # The dense G is symmetric PSD (a sanity check on the reference itself).
    assert np.allclose(g, g.T) and np.linalg.eigvalsh(g).min() > -1e-12


def test_ggn_scales_with_output_hessian(x64):
    # H = 2 / (C nx ny sigma^2): doubling sigma quarters G. Fails if H is dropped or misplaced.
    apply, params = pixel_mlp(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=2)
    g1 = dense_matrix(GaussNewtonBlocks(apply, params, x, SIGMA))
    g2 = dense_matrix(GaussNewtonBlocks(apply, params, x, 2 * SIGMA))
    np.testing.assert_allclose(g2, g1 / 4, rtol=1e-12, atol=1e-16)


def test_products_inside_a_solver_loop_are_counted(x64):
    # A solver's jitted loop (the baseline CG) multiplies inside one program; the operator
    # counts what the loop reports, and the products are the same linear map.
    from symgrad.diagnostics.solvers._cg import _restarted_cg

    apply, params = flat_mlp(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=2)
    op = GaussNewtonBlocks(apply, params, x, SIGMA, damping=1e-2)
    a = dense_matrix(op.with_damping(1e-2))
    b = jnp.asarray(np.random.default_rng(0).normal(size=(3, a.shape[0])))
    k = 3
    eta, cap2 = jnp.asarray(1e-14), jnp.full((k,), jnp.inf)
    y, iters, steps, _ = op.loop(_restarted_cg, b, eta, cap2, jnp.asarray(10_000, jnp.int32))
    exact = np.linalg.solve(a, np.asarray(b).T).T
    np.testing.assert_allclose(np.asarray(y), exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    assert op.products >= k * int(steps) > 0


@pytest.mark.parametrize("vectors_per_product", [None, 2])
def test_gauss_newton_blocks_match_dense(x64, vectors_per_product):
    apply, params = small_cnn(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=3)
    g = dense_ggn(apply, params, x, SIGMA)
    vs = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (5, g.shape[0])))
    op = GaussNewtonBlocks(apply, params, x, SIGMA, damping=0.5, vectors_per_product=vectors_per_product)
    got = np.asarray(op(jnp.asarray(vs)))
    np.testing.assert_allclose(got, vs @ (g + 0.5 * np.eye(len(g))), rtol=1e-11, atol=1e-13 * np.abs(g).max())
    assert op.products == 5 and op.with_damping(0.0).products == 0
    np.testing.assert_allclose(np.asarray(op.with_damping(0.0)(jnp.asarray(vs))), vs @ g, rtol=1e-11,
                               atol=1e-13 * np.abs(g).max())
