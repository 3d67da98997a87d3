"""Conservative <-> primitive variables of the ideal-gas Euler equations (docs/design.md section 2)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def conservative_to_primitive(
    q: Float[Array, "*b nx ny 4"], gamma: float = 1.4
) -> tuple[Float[Array, "*b nx ny"], Float[Array, "*b nx ny"], Float[Array, "*b nx ny"], Float[Array, "*b nx ny"]]:
    """``(rho, m_x, m_y, E) -> (rho, u, v, p)`` with ``p = (gamma - 1) (E - |m|^2 / (2 rho))``.

    No clipping: a non-positive density or pressure shows up as such (the solver reports it).
    """
    rho, mx, my, e = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    u = mx / rho
    v = my / rho
    # (mx*u + my*v) keeps the kinetic energy symmetric under u <-> v, so D4 acts exactly.
    p = (gamma - 1.0) * (e - 0.5 * (mx * u + my * v))
    return rho, u, v, p


def primitive_to_conservative(
    rho: Float[Array, "*b nx ny"],
    u: Float[Array, "*b nx ny"],
    v: Float[Array, "*b nx ny"],
    p: Float[Array, "*b nx ny"],
    gamma: float = 1.4,
) -> Float[Array, "*b nx ny 4"]:
    """``(rho, u, v, p) -> (rho, rho u, rho v, p / (gamma - 1) + rho |u|^2 / 2)``."""
    rho, u, v, p = jnp.broadcast_arrays(*(jnp.asarray(a) for a in (rho, u, v, p)))
    mx = rho * u
    my = rho * v
    e = p / (gamma - 1.0) + 0.5 * (mx * u + my * v)
    return jnp.stack([rho, mx, my, e], axis=-1)
