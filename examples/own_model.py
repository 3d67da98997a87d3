"""Bring your own Flax model and states: symgrad's diagnostics from Python.

    python examples/own_model.py

1. States: a few CE-RP Riemann problems at 16x16 from symgrad's solver (any arrays of
   conservative states ``(N, nx, ny, 4)`` = (rho, m_x, m_y, E) do: your own solver's, or
   PDEGym's through ``symgrad.data.open_dataset``).
2. Your model: a small periodic CNN in Flax linen, trained a few steps on the SMSE.
3. The diagnostics: forward equivariance errors over D4 and the gradient overlaps in the
   Euclidean and chi metrics at damping 1e-6, certified to 1e-6.

Flax initialises parameters in float32; both diagnostics cast parameters and data to float64
(``precision="float64"``, the default), so nothing is silently computed in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from symgrad import euler, groups
from symgrad.diagnostics import OverlapConfig, compute_overlaps, equivariance_errors
from symgrad.loss import channel_scales, smse
from symgrad.models import surrogate_apply


class PeriodicCNN(nn.Module):
    """Your architecture: x + conv(gelu(conv(x))) with periodic padding (the domain is a torus)."""

    width: int = 8

    @nn.compact
    def __call__(self, x):
        pad = lambda h: jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")  # noqa: E731
        h = nn.gelu(nn.Conv(self.width, (3, 3), padding="VALID")(pad(x)))
        return x + nn.Conv(4, (3, 3), padding="VALID")(pad(h))


def make_states(n: int = 12, resolution: int = 16, dt: float = 0.05, seed: int = 0):
    """``(x, y)``: states at t = 0 and t = dt of ``n`` CE-RP problems."""
    q0 = euler.sample_initial("CE-RP", jax.random.key(seed), n, resolution)
    result = euler.solve(q0, jnp.array([0.0, dt]))
    states = np.asarray(result.states[np.asarray(result.ok)], np.float32)
    return states[:, 0], states[:, 1]


def main(steps: int = 60, samples: int = 3):
    x, y = make_states()
    x_train, y_train, x_test, y_test = x[samples:], y[samples:], x[:samples], y[:samples]
    sigma = channel_scales(y_train)  # SMSE scales, momentum scale shared (keeps D4 a symmetry)

    model = PeriodicCNN()
    params = model.init(jax.random.key(1), x_train[:1])  # float32, Flax's default
    f = surrogate_apply(model.apply, sigma)  # the physical map sigma * net(x / sigma)

    optimizer = optax.adamw(3e-3, weight_decay=1e-6)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: smse(f(p, x_train), y_train, sigma).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(steps):
        params, opt_state, loss = train_step(params, opt_state)
    print(f"trained {steps} steps: train SMSE {float(loss):.4g}")

    d4 = groups.named_group("d4")
    eq = equivariance_errors(f, params, x_test, y_test, sigma, d4)
    print(f"equivariance ({eq.attrs['compute_dtype']}): median error per element "
          + ", ".join(f"{e}: {v:.2g}" for e, v in zip(eq["element"].values,
                                                     eq["equivariance_error_stats"].sel(stat="median").values)))
    print(f"test SMSE {float(eq['test_error'].mean()):.4g} against persistence SMSE(x, y) "
          f"{float(eq['persistence_error'].mean()):.4g}")

    ov = compute_overlaps(f, params, x_test, y_test, sigma, d4, OverlapConfig(metric="both", damping=1e-6, rtol=1e-6))
    print(f"overlaps ({ov.attrs['dtype']}, {ov.attrs['ggn_products']} Gauss-Newton products, "
          f"{ov.attrs['n_flagged']} values not certified): median chi cosine per element "
          + ", ".join(f"{e}: {v:.3f}" for e, v in zip(ov["element"].values,
                                                      ov["overlap_cosine_chi_stats"].sel(stat="median").values)))
    return eq, ov


if __name__ == "__main__":
    main()
