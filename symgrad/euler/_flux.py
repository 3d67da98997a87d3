"""HLLC numerical flux in the x-direction (Toro, *Riemann Solvers*, 3rd ed., section 10.4).

Only the x-direction exists: the y-flux is this same function applied to y-faces with the
velocity components swapped, normal first (see ``_solver.tendency``), so that the scheme is
written once and is identical in both directions.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def _physical_flux_x(rho, u, v, p, e):
    mx = rho * u
    return jnp.stack([mx, mx * u + p, mx * v, (e + p) * u], axis=-1)


def hllc_flux_x(
    w_left: Float[Array, "*b 4"], w_right: Float[Array, "*b 4"], gamma: float
) -> Float[Array, "*b 4"]:
    """Flux of ``(rho, m_x, m_y, E)`` through an x-face from primitive ``(rho, u, v, p)`` states.

    Wave-speed bounds are Einfeldt's (Roe-averaged, as in HLLE), which keep the first-order
    scheme positivity preserving; the contact speed ``S*`` follows Toro eq. (10.37). Every
    expression is mirror-symmetric under ``u -> -u, left <-> right`` so that x-reflections
    commute with the flux to round-off.
    """
    rl, ul, vl, pl = (w_left[..., k] for k in range(4))
    rr, ur, vr, pr = (w_right[..., k] for k in range(4))
    el = pl / (gamma - 1.0) + 0.5 * rl * (ul * ul + vl * vl)
    er = pr / (gamma - 1.0) + 0.5 * rr * (ur * ur + vr * vr)
    cl = jnp.sqrt(gamma * pl / rl)
    cr = jnp.sqrt(gamma * pr / rr)

    # Roe averages for Einfeldt's bounds.
    sql, sqr = jnp.sqrt(rl), jnp.sqrt(rr)
    inv = 1.0 / (sql + sqr)
    u_roe = (sql * ul + sqr * ur) * inv
    v_roe = (sql * vl + sqr * vr) * inv
    h_roe = (sql * (el + pl) / rl + sqr * (er + pr) / rr) * inv
    c_roe = jnp.sqrt(jnp.maximum((gamma - 1.0) * (h_roe - 0.5 * (u_roe * u_roe + v_roe * v_roe)), 0.0))
    s_left = jnp.minimum(ul - cl, u_roe - c_roe)
    s_right = jnp.maximum(ur + cr, u_roe + c_roe)

    # Mass fluxes relative to the outer waves; a_l < 0 < a_r for positive states.
    a_l = rl * (s_left - ul)
    a_r = rr * (s_right - ur)
    s_star = ((pr - pl) + (ul * a_l - ur * a_r)) / (a_l - a_r)

    f_left = _physical_flux_x(rl, ul, vl, pl, el)
    f_right = _physical_flux_x(rr, ur, vr, pr, er)
    u_left = jnp.stack([rl, rl * ul, rl * vl, el], axis=-1)
    u_right = jnp.stack([rr, rr * ur, rr * vr, er], axis=-1)

    def star_flux(rho, u, v, p, e, s, a, f, cons):
        # Toro eq. (10.39): the star state on side K, then F*K = FK + sK (U*K - UK).
        factor = a / (s - s_star)
        u_star = jnp.stack(
            [
                factor,
                factor * s_star,
                factor * v,
                factor * (e / rho + (s_star - u) * (s_star + p / a)),
            ],
            axis=-1,
        )
        return f + s[..., None] * (u_star - cons)

    f_star_left = star_flux(rl, ul, vl, pl, el, s_left, a_l, f_left, u_left)
    f_star_right = star_flux(rr, ur, vr, pr, er, s_right, a_r, f_right, u_right)

    sl, ss, sr = s_left[..., None], s_star[..., None], s_right[..., None]
    return jnp.where(
        sl >= 0.0, f_left, jnp.where(ss >= 0.0, f_star_left, jnp.where(sr > 0.0, f_star_right, f_right))
    )
