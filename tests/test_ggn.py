"""The matrix-free Gauss-Newton operator against the dense J^T H J."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from symgrad.diagnostics.ggn import (
    damped_ggn_operator, ggn_operator, linearize_ggn,
)
from test_overlap_helpers import SIGMA, dense_ggn, flat_mlp, pixel_mlp, small_cnn, transitions


@pytest.mark.parametrize("model", [pixel_mlp, flat_mlp, small_cnn])
@pytest.mark.parametrize("jit", [False, True])
def test_ggn_matvec_matches_dense(x64, model, jit):
    apply, params = model(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=3)
    g = dense_ggn(apply, params, x, SIGMA)
    p = g.shape[0]
    vs = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (4, p)))

    def block(params, x, vs):
        lin = linearize_ggn(apply, params, x, SIGMA)
        return jax.vmap(lin.matvec)(vs)

    fn = jax.jit(block) if jit else block
    got = np.asarray(fn(params, x, jnp.asarray(vs)))
    np.testing.assert_allclose(got, vs @ g, rtol=1e-11, atol=1e-13 * np.abs(g).max())
    one = np.asarray(linearize_ggn(apply, params, x, SIGMA).matvec(jnp.asarray(vs[0])))  # one product
    np.testing.assert_allclose(one, g @ vs[0], rtol=1e-11, atol=1e-13 * np.abs(g).max())


def test_operators_are_tagged_and_damped(x64):
    apply, params = pixel_mlp(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=2)
    g = dense_ggn(apply, params, x, SIGMA)
    op = ggn_operator(apply, params, x, SIGMA)
    assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    np.testing.assert_allclose(np.asarray(op.as_matrix()), g, rtol=1e-11, atol=1e-14)
    damped = damped_ggn_operator(apply, params, x, SIGMA, damping=0.25)
    assert lx.is_symmetric(damped) and lx.is_positive_semidefinite(damped)
    np.testing.assert_allclose(np.asarray(damped.as_matrix()), g + 0.25 * np.eye(len(g)), rtol=1e-11, atol=1e-14)
    # The dense G is symmetric PSD (a sanity check on the reference itself).
    assert np.allclose(g, g.T) and np.linalg.eigvalsh(g).min() > -1e-12


def test_ggn_scales_with_output_hessian(x64):
    # H = 2 / (C nx ny sigma^2): doubling sigma quarters G. Fails if H is dropped or misplaced.
    apply, params = pixel_mlp(jax.random.PRNGKey(0))
    x, _ = transitions(jax.random.PRNGKey(1), n_samples=2)
    g1 = np.asarray(ggn_operator(apply, params, x, SIGMA).as_matrix())
    g2 = np.asarray(ggn_operator(apply, params, x, 2 * SIGMA).as_matrix())
    np.testing.assert_allclose(g2, g1 / 4, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("vectors_per_product", [None, 2])
def test_gauss_newton_blocks_match_dense(x64, vectors_per_product):
    from symgrad.diagnostics.ggn import GaussNewtonBlocks

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
