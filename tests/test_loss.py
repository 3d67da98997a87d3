"""SMSE against a direct numpy evaluation of docs/design.md section 4."""

import numpy as np
import pytest

from symgrad import loss
from symgrad.errors import SymgradError


def _reference_smse(pred, target, sigma):
    # Straight from the formula: (1/C) sum_c mean_ij (yhat_c - y_c)^2 / sigma_c^2
    c = pred.shape[-1]
    total = 0.0
    for ch in range(c):
        total += np.mean((pred[..., ch] - target[..., ch]) ** 2) / sigma[ch] ** 2
    return total / c


def test_channel_scales_share_momentum_rms():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(5, 8, 8, 4)) * np.array([1.0, 2.0, 5.0, 3.0])
    sigma = loss.channel_scales(t)
    assert sigma.shape == (4,)
    assert sigma[1] == sigma[2]
    np.testing.assert_allclose(sigma[0], np.sqrt(np.mean(t[..., 0] ** 2)))
    np.testing.assert_allclose(sigma[1], np.sqrt(0.5 * (np.mean(t[..., 1] ** 2) + np.mean(t[..., 2] ** 2))))
    np.testing.assert_allclose(sigma[3], np.sqrt(np.mean(t[..., 3] ** 2)))
    loss.check_scales(sigma)


def test_zero_channel_falls_back_to_unit_scale():
    t = np.ones((2, 4, 4, 4))
    t[..., 1:3] = 0.0
    assert np.all(loss.channel_scales(t)[1:3] == 1.0)


def test_check_scales_rejects_unshared_momentum():
    with pytest.raises(SymgradError, match="share"):
        loss.check_scales(np.array([1.0, 1.0, 2.0, 1.0]))


def test_smse_matches_formula(x64):
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(3, 6, 5, 4))
    target = rng.normal(size=(3, 6, 5, 4))
    sigma = np.array([0.5, 2.0, 2.0, 3.0])
    got = np.asarray(loss.smse(pred, target, sigma))
    want = np.array([_reference_smse(pred[b], target[b], sigma) for b in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_output_hessian_is_second_derivative_of_smse(x64):
    import jax
    import jax.numpy as jnp

    sigma = jnp.array([0.5, 2.0, 2.0, 3.0])
    target = jnp.zeros((3, 2, 4))
    hess = jax.hessian(lambda p: loss.smse(p, target, sigma))(jnp.ones((3, 2, 4)))
    diag = jnp.diagonal(hess.reshape(24, 24))
    want = jnp.broadcast_to(loss.smse_output_hessian_diag(sigma, 3, 2), (3, 2, 4)).reshape(-1)
    np.testing.assert_allclose(diag, want, rtol=1e-14)
