"""SMSE, the scaled mean-squared error of docs/design.md section 4.

``L = (1/C) sum_c mean_ij (yhat_c - y_c)^2 / sigma_c^2`` with one shared sigma for both
momentum components, so that L is invariant under D4 and translations.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from symgrad.errors import SymgradError

N_CHANNELS = 4  # (rho, m_x, m_y, E)


def channel_scales(targets) -> np.ndarray:
    """Per-channel RMS of training targets ``(..., nx, ny, 4)``, momentum RMS shared.

    Computed in float64 with numpy so that it does not depend on the batch order. The
    momentum scale is ``sqrt(mean(m_x^2 + m_y^2) / 2)``: a rotation mixes m_x and m_y, so
    only a shared scale keeps the loss rotation invariant.
    """
    t = np.asarray(targets, dtype=np.float64).reshape(-1, N_CHANNELS)
    if t.shape[0] == 0:
        raise ValueError("channel_scales needs at least one target state")
    ms = np.mean(t**2, axis=0)
    momentum = 0.5 * (ms[1] + ms[2])
    sigma = np.sqrt(np.array([ms[0], momentum, momentum, ms[3]]))
    # A channel that is identically zero in the data (e.g. momentum at rest) must not
    # divide by zero: fall back to 1, which leaves that channel's error unscaled.
    return np.where(sigma > 0, sigma, 1.0)


def check_scales(sigma, *, shared_momentum: bool = True) -> np.ndarray:
    """``sigma`` as float64, after checking it: 4 positive, finite channel scales, with one
    scale for both momentum components unless ``shared_momentum`` is False (a rotation mixes
    m_x and m_y, so only a shared scale keeps SMSE invariant: docs/design.md section 4).
    Every part of symgrad that takes a sigma checks it here."""
    s = np.asarray(sigma, dtype=np.float64)
    if s.shape != (N_CHANNELS,):
        raise SymgradError(f"sigma must be {N_CHANNELS} channel scales, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise SymgradError(f"sigma must be positive and finite, got {s.tolist()}")
    if shared_momentum and not np.isclose(s[1], s[2], rtol=1e-6, atol=0.0):
        raise SymgradError(
            f"sigma must share one scale for both momentum components (got {s[1]} and {s[2]}), or SMSE "
            "depends on the orientation; use symgrad.loss.channel_scales")
    return s


def smse(
    pred: Float[Array, "*batch nx ny 4"],
    target: Float[Array, "*batch nx ny 4"],
    sigma: Float[Array, "4"],
) -> Float[Array, "*batch"]:
    """Per-sample SMSE; reduce with ``.mean()`` for the batch loss."""
    sq = (pred - target) ** 2 / jnp.asarray(sigma, dtype=pred.dtype) ** 2
    return jnp.mean(sq, axis=(-3, -2, -1))


def smse_output_hessian_diag(sigma, nx: int, ny: int):
    """Diagonal of the SMSE output Hessian per channel: ``2 / (C nx ny sigma_c^2)``."""
    sigma = jnp.asarray(sigma)
    return 2.0 / (N_CHANNELS * nx * ny * sigma**2)
