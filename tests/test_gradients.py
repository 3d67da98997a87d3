"""Per-example gradients against jax.grad one sample at a time."""

import jax
import numpy as np
import pytest

from symgrad.diagnostics.gradients import per_example_gradients
from test_overlap_helpers import SIGMA, dense_gradients, pixel_mlp, small_cnn, transitions


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 8])
@pytest.mark.parametrize("model", [pixel_mlp, small_cnn])
def test_per_example_gradients_match_grad_one_by_one(x64, model, chunk_size):
    apply, params = model(jax.random.PRNGKey(0))
    x, y = transitions(jax.random.PRNGKey(1), n_samples=5)
    got = np.asarray(per_example_gradients(apply, params, x, y, SIGMA, chunk_size=chunk_size))
    want = dense_gradients(apply, params, x, y, SIGMA)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * np.abs(want).max())


def test_custom_loss_is_used(x64):
    apply, params = pixel_mlp(jax.random.PRNGKey(0))
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    g_smse = per_example_gradients(apply, params, x, y, SIGMA)
    # Twice the loss, twice the gradient: the loss_fn really replaces SMSE.
    from symgrad.loss import smse

    g2 = per_example_gradients(apply, params, x, y, loss_fn=lambda p, t: 2 * smse(p, t, SIGMA))
    np.testing.assert_allclose(np.asarray(g2), 2 * np.asarray(g_smse), rtol=1e-13)


def test_needs_sigma_or_loss():
    apply, params = pixel_mlp(jax.random.PRNGKey(0))
    x, y = transitions(jax.random.PRNGKey(1), n_samples=2)
    with pytest.raises(ValueError):
        per_example_gradients(apply, params, x, y)
