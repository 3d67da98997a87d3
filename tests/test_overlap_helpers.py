"""Tiny models and dense references shared by the overlap/gradient/GGN tests (no tests here)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from symgrad.groups import D4_ELEMENTS, act_d4, d4_inverse
from symgrad.loss import smse, smse_output_hessian_diag

SIGMA = np.array([1.3, 0.7, 0.7, 2.1])  # shared momentum scale: SMSE is D4-invariant


def pixel_mlp(key, hidden=16):
    """An MLP applied per cell (148 params for hidden=16)."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w1": jax.random.normal(k1, (4, hidden)) * 0.7,
        "b1": 0.1 * jax.random.normal(k3, (hidden,)),
        "w2": jax.random.normal(k2, (hidden, 4)) * 0.5,
        "b2": jnp.zeros(4),
    }

    def apply(p, x):
        return x + jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return apply, params


def flat_mlp(key, n=4, hidden=12):
    """An MLP on the flattened n x n x 4 state (64 -> 12 -> 64: 1612 params)."""
    d = n * n * 4
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (d, hidden)) / np.sqrt(d),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, d)) / np.sqrt(hidden),
        "b2": jnp.zeros(d),
    }

    def apply(p, x):
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
        return x + (h @ p["w2"] + p["b2"]).reshape(x.shape)

    return apply, params


class _CNN(nn.Module):
    width: int = 6

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.width, (3, 3), padding="CIRCULAR")(x)
        h = jnp.tanh(h)
        return x + nn.Conv(4, (3, 3), padding="CIRCULAR")(h)


def small_cnn(key, n=4, width=6):
    """A two-layer periodic CNN (442 params for width 6)."""
    module = _CNN(width)
    params = module.init(key, jnp.zeros((1, n, n, 4)))
    # flax initialises float32 whatever the x64 flag; the dense references need float64.
    params = jax.tree.map(lambda a: a.astype(jnp.result_type(float)), params)
    return module.apply, params


def d4_average(apply):
    """``f_eq(x) = (1/8) sum_g g^-1 f(g x)``: exactly D4-equivariant whatever f is."""

    def apply_eq(p, x):
        outs = [act_d4(d4_inverse(g), apply(p, act_d4(g, x))) for g in D4_ELEMENTS]
        return sum(outs) / len(outs)

    return apply_eq


def transitions(key, n_samples=4, n=4):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n_samples, n, n, 4)) + jnp.array([2.0, 0.0, 0.0, 5.0])
    y = x + 0.3 * jax.random.normal(ky, x.shape)
    return x, y


# ----------------------------------------------------------------------------- dense


def dense_gradients(apply, params, x, y, sigma):
    """Per-sample gradients one by one with jax.grad (no vmap)."""
    rows = []
    for i in range(x.shape[0]):
        g = jax.grad(lambda p: smse(apply(p, x[i : i + 1]), y[i : i + 1], sigma)[0])(params)
        rows.append(np.asarray(ravel_pytree(g)[0]))
    return np.stack(rows)


def dense_ggn(apply, params, x_curv, sigma):
    """``G = (1/|B|) sum_b J_b^T H J_b`` with J from jacfwd on the flat parameters."""
    flat, unravel = ravel_pytree(params)
    jac = jax.jit(jax.jacfwd(lambda q: apply(unravel(q), x_curv).reshape(-1)))(flat)
    nx, ny = x_curv.shape[1:3]
    h = np.broadcast_to(np.asarray(smse_output_hessian_diag(sigma, nx, ny)), x_curv.shape).reshape(-1)
    j = np.asarray(jac)
    return (j.T * h) @ j / x_curv.shape[0]


def dense_damped_ggn(apply, params, x_curv, sigma, damping):
    """``A = lambda I + G`` and its condition number (apply chi by np.linalg.solve, not inv:
    the explicit inverse loses ~cond * eps relative accuracy in the bilinear forms)."""
    key = (apply, x_curv.shape, float(np.asarray(x_curv).sum()))
    if key not in _GGN_CACHE:
        g = dense_ggn(apply, params, x_curv, sigma)
        _GGN_CACHE[key] = g, np.linalg.eigvalsh(g)
    g, ev = _GGN_CACHE[key]
    a = damping * np.eye(g.shape[0]) + g
    return a, (ev.max() + damping) / (max(ev.min(), 0.0) + damping)


_GGN_CACHE = {}
