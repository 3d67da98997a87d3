"""The diagnostic on the project's architectures (random init, float64): the G-CNN is
D4-equivariant to round-off, the UNet shift-equivariant for multiples of its
down-sampling factor, the ViT with learned position embeddings neither."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symgrad.diagnostics import EquivarianceConfig
from symgrad.diagnostics.equivariance import equivariance_errors
from symgrad.groups import D4_ELEMENTS, named_group
from symgrad.loss import channel_scales

from symgrad import models

RES = 8
ROUND_OFF = 1e-24  # SMSE of float64 round-off differences is ~1e-30
CLEARLY_NONZERO = 1e-8


def _states(n, seed):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    rho = jax.random.uniform(k1, (n, RES, RES, 1), jnp.float64, 0.5, 1.5)
    m = jax.random.uniform(k2, (n, RES, RES, 2), jnp.float64, -0.5, 0.5)
    e = jax.random.uniform(k3, (n, RES, RES, 1), jnp.float64, 2.0, 3.0)
    return jnp.concatenate([rho, m, e], axis=-1)


def _setup(name, **overrides):
    model = models.build(name, "tiny", RES, **overrides)
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    x, y = _states(2, 1), _states(2, 2)
    sigma = channel_scales(y)
    return model, models.surrogate_apply(model.apply, sigma), params, x, y, sigma


def test_gcnn_is_d4_equivariant_to_round_off(x64):
    _, f, params, x, y, sigma = _setup("gcnn")
    ds = equivariance_errors(f, params, x, y, sigma, named_group("d4"), EquivarianceConfig(eval_chunk=24))
    assert float(ds["equivariance_error"].max()) < ROUND_OFF
    # and it is not trivially so: the model does change the state
    assert float(ds["test_error"].min()) > CLEARLY_NONZERO


def test_unet_is_shift_equivariant_for_multiples_of_its_downsampling_factor(x64):
    model, f, params, x, y, sigma = _setup("unet")
    factor = model.downsampling_factor
    assert 1 < factor < RES
    ds = equivariance_errors(f, params, x, y, sigma, named_group("translate-x", RES), EquivarianceConfig(eval_chunk=48))
    exact = [k for k in range(RES) if k % factor == 0]
    off = [k for k in range(RES) if k % factor]
    assert float(ds["equivariance_error"].sel(element=exact).max()) < ROUND_OFF
    # strided down-sampling breaks the other shifts
    assert float(ds["equivariance_error"].sel(element=off).min()) > CLEARLY_NONZERO


@pytest.mark.slow
def test_unet_is_not_d4_equivariant(x64):
    _, f, params, x, y, sigma = _setup("unet")
    d4 = equivariance_errors(f, params, x, y, sigma, named_group("d4"), EquivarianceConfig(eval_chunk=24))
    assert float(d4["equivariance_error"].sel(element=list(D4_ELEMENTS[1:])).min()) > CLEARLY_NONZERO


def test_vit_with_learned_position_embeddings_is_not_d4_equivariant(x64):
    model, f, params, x, y, sigma = _setup("vit")
    assert model.config["position_embedding"] == "learned"
    d4 = equivariance_errors(f, params, x, y, sigma, named_group("d4"), EquivarianceConfig(eval_chunk=24))
    assert float(d4["equivariance_error"].sel(element="e").max()) < ROUND_OFF
    assert float(d4["equivariance_error"].sel(element=list(D4_ELEMENTS[1:])).min()) > CLEARLY_NONZERO
    assert np.all(np.isfinite(d4["orbit_error"].values))


@pytest.mark.slow
def test_vit_with_learned_position_embeddings_is_not_shift_equivariant(x64):
    model, f, params, x, y, sigma = _setup("vit")
    patch = int(model.config["patch"])
    shifts = named_group("translate-y", RES, stride=patch)
    ds = equivariance_errors(f, params, x, y, sigma, shifts, EquivarianceConfig(eval_chunk=24))
    assert float(ds["equivariance_error"].sel(element=0).max()) < ROUND_OFF
    assert float(ds["equivariance_error"].sel(element=list(shifts.elements[1:])).min()) > CLEARLY_NONZERO
