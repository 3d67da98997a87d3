"""Exact solution of the 1-D Riemann problem for the ideal-gas Euler equations (for tests).

Toro, *Riemann Solvers and Numerical Methods for Fluid Dynamics*, 3rd ed., chapter 4: Newton
iteration for the star pressure (4.5)-(4.9), then sampling of the self-similar solution
(section 4.5). Plain NumPy in float64; not differentiable and not jitted on purpose.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from symgrad.errors import SymgradError


class PrimitiveState(NamedTuple):
    rho: float
    u: float
    p: float


def _pressure_function(p, state: PrimitiveState, gamma):
    """Toro's f_K(p) and its derivative: shock branch for p > p_K, rarefaction otherwise."""
    rho, _, pk = state
    c = np.sqrt(gamma * pk / rho)
    if p > pk:
        a = 2.0 / ((gamma + 1.0) * rho)
        b = (gamma - 1.0) / (gamma + 1.0) * pk
        root = np.sqrt(a / (p + b))
        return (p - pk) * root, root * (1.0 - 0.5 * (p - pk) / (b + p))
    ratio = p / pk
    f = 2.0 * c / (gamma - 1.0) * (ratio ** ((gamma - 1.0) / (2.0 * gamma)) - 1.0)
    df = 1.0 / (rho * c) * ratio ** (-(gamma + 1.0) / (2.0 * gamma))
    return f, df


def star_state(left: PrimitiveState, right: PrimitiveState, gamma: float = 1.4, tol: float = 1e-14):
    """``(p*, u*)`` between the two non-linear waves."""
    left, right = PrimitiveState(*map(float, left)), PrimitiveState(*map(float, right))
    cl = np.sqrt(gamma * left.p / left.rho)
    cr = np.sqrt(gamma * right.p / right.rho)
    du = right.u - left.u
    if 2.0 * (cl + cr) / (gamma - 1.0) <= du:
        raise SymgradError("the Riemann problem creates vacuum; the exact solver does not handle it")
    # Two-rarefaction guess (Toro 4.46): exact when both waves are rarefactions.
    z = (gamma - 1.0) / (2.0 * gamma)
    p = ((cl + cr - 0.5 * (gamma - 1.0) * du) / (cl / left.p**z + cr / right.p**z)) ** (1.0 / z)
    p = max(p, 1e-12 * min(left.p, right.p))
    for _ in range(100):
        fl, dfl = _pressure_function(p, left, gamma)
        fr, dfr = _pressure_function(p, right, gamma)
        p_new = max(p - (fl + fr + du) / (dfl + dfr), 1e-14 * p)
        if abs(p_new - p) <= tol * 0.5 * (p_new + p):
            p = p_new
            break
        p = p_new
    fl, _ = _pressure_function(p, left, gamma)
    fr, _ = _pressure_function(p, right, gamma)
    return p, 0.5 * (left.u + right.u) + 0.5 * (fr - fl)


def sample(
    xi: np.ndarray, left: PrimitiveState, right: PrimitiveState, gamma: float = 1.4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rho, u, p)`` of the similarity solution at ``xi = (x - x0) / t``."""
    left, right = PrimitiveState(*map(float, left)), PrimitiveState(*map(float, right))
    p_star, u_star = star_state(left, right, gamma)
    xi = np.asarray(xi, dtype=np.float64)
    g1 = (gamma - 1.0) / (gamma + 1.0)

    def side(state: PrimitiveState, sign: float, xi_side):
        # sign = +1 for the left wave (waves move with u - c), -1 for the right wave,
        # written once by mirroring: u -> sign*u, xi -> sign*xi.
        rho, u, p = state
        u, us, x = sign * u, sign * u_star, sign * xi_side
        c = np.sqrt(gamma * p / rho)
        if p_star > p:  # shock
            ratio = p_star / p
            rho_star = rho * (ratio + g1) / (g1 * ratio + 1.0)
            speed = u - c * np.sqrt((gamma + 1.0) / (2.0 * gamma) * ratio + (gamma - 1.0) / (2.0 * gamma))
            out_rho = np.where(x < speed, rho, rho_star)
            out_u = np.where(x < speed, u, us)
            out_p = np.where(x < speed, p, p_star)
        else:  # rarefaction
            rho_star = rho * (p_star / p) ** (1.0 / gamma)
            c_star = c * (p_star / p) ** ((gamma - 1.0) / (2.0 * gamma))
            head, tail = u - c, us - c_star
            fan_u = 2.0 / (gamma + 1.0) * (c + 0.5 * (gamma - 1.0) * u + x)
            fan_c = 2.0 / (gamma + 1.0) * (c + 0.5 * (gamma - 1.0) * (u - x))
            fan_rho = rho * (fan_c / c) ** (2.0 / (gamma - 1.0))
            fan_p = p * (fan_c / c) ** (2.0 * gamma / (gamma - 1.0))
            out_rho = np.where(x < head, rho, np.where(x < tail, fan_rho, rho_star))
            out_u = np.where(x < head, u, np.where(x < tail, fan_u, us))
            out_p = np.where(x < head, p, np.where(x < tail, fan_p, p_star))
        return out_rho, sign * out_u, out_p

    rho_l, u_l, p_l = side(left, 1.0, xi)
    rho_r, u_r, p_r = side(right, -1.0, xi)
    left_of_contact = xi < u_star
    return (
        np.where(left_of_contact, rho_l, rho_r),
        np.where(left_of_contact, u_l, u_r),
        np.where(left_of_contact, p_l, p_r),
    )


def cell_averages(
    edges: np.ndarray, x0: float, t: float, left: PrimitiveState, right: PrimitiveState,
    gamma: float = 1.4, subcells: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Midpoint-rule averages of ``(rho, u, p)`` over cells ``[edges[k], edges[k+1]]`` at time t."""
    edges = np.asarray(edges, dtype=np.float64)
    frac = (np.arange(subcells) + 0.5) / subcells
    x = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * frac[None, :]
    rho, u, p = sample((x - x0) / t, left, right, gamma)
    return rho.mean(axis=1), u.mean(axis=1), p.mean(axis=1)
