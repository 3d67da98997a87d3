"""Private numerics of the overlap engine: batched CG for chi-solves, certified bilinear forms.

See docs/overlap.md for the derivations. Everything here is a pure function of arrays.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from symgrad.diagnostics.ggn import damped_operator, linearize_ggn, smse_output_hessian

# Recompute the residual b - A y explicitly every this many CG steps ("residual
# replacement"), so that the recursive residual that drives the stopping rule does not
# drift away from the true one over thousands of steps.
RESIDUAL_REPLACEMENT_EVERY = 50


class SolveResult(NamedTuple):
    """Approximate solutions of ``(lambda I + G) y_k = b_k`` for a block of right-hand sides.

    ``residual`` is the explicitly recomputed ``b - A y`` (one extra operator application
    after the loop), never the solver's recursive residual.
    """

    solution: jax.Array  # (K, P)
    residual: jax.Array  # (K, P)
    residual_norm: jax.Array  # (K,) ||b - A y||_2, explicit
    rhs_norm: jax.Array  # (K,) ||b||_2
    iterations: jax.Array  # (K,) CG steps taken by each right-hand side
    converged: jax.Array  # (K,) stopping rule met by the *explicit* residual
    block_steps: jax.Array  # () loop trips of the block (the slowest right-hand side)
    ggn_products: jax.Array  # () Gauss-Newton products evaluated (K per batched product)


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _stop(rr, bty, eta, cap2):
    # ||r||^2 <= eta * b^T y with eta = safety * rtol * lambda: then the certified bound
    # ||r_u|| ||r_v|| / lambda is <= safety * rtol * sqrt(<u,u>_chi <v,v>_chi) (docs/overlap.md).
    # b^T y_k increases monotonically to b^T chi b along CG from y_0 = 0. ``cap2`` is an
    # extra absolute cap on ||r||^2 (the Frobenius normalisation needs it for the u-solves).
    return (rr <= eta * jnp.maximum(bty, 0.0)) & (rr <= cap2)


def _block_cg(mv, b, y0, r0, eta, cap2, max_steps, replace_every):
    """K independent CG recurrences advanced together; ``mv`` maps (K, P) -> (K, P).

    Sharing the loop lets every step be one batched operator application (one vmapped
    linearised jvp/vjp pair). Right-hand sides that have met the stopping rule are frozen
    (step length 0) while the others continue. Starts from ``y0`` with residual ``r0``.
    Returns ``(y, iterations per rhs, loop trips, residual replacements)``.
    """
    k_rhs = b.shape[0]
    rr = _dot(r0, r0)
    active = ~_stop(rr, _dot(b, y0), eta, cap2) & (rr > 0)
    iters = jnp.zeros((k_rhs,), jnp.int32)

    def cond(state):
        step, _, _, _, _, active, _ = state
        return (step < max_steps) & jnp.any(active)

    def body(state):
        step, y, r, p, rr, active, iters = state
        ap = mv(p)
        pap = _dot(p, ap)
        ok = active & (pap > 0)
        alpha = jnp.where(ok, rr / jnp.where(ok, pap, 1.0), 0.0)
        y = y + alpha[:, None] * p
        step = step + 1
        r = jax.lax.cond(
            step % replace_every == 0,
            lambda: b - mv(y),
            lambda: r - alpha[:, None] * ap,
        )
        rr_new = _dot(r, r)
        beta = jnp.where(ok, rr_new / jnp.where(ok, rr, 1.0), 0.0)
        p = jnp.where(ok[:, None], r + beta[:, None] * p, p)
        iters = iters + ok.astype(jnp.int32)
        active = ok & ~_stop(rr_new, _dot(b, y), eta, cap2) & (rr_new > 0)
        rr = jnp.where(ok, rr_new, rr)
        return step, y, r, p, rr, active, iters

    state = (jnp.zeros((), jnp.int32), y0, r0, r0, rr, active, iters)
    step, y, _, _, _, _, iters = jax.lax.while_loop(cond, body, state)
    return y, iters, step, step // replace_every


# CG restarts from the explicit residual when the recursive one drifted (it met the rule,
# the explicit one does not). Each restart costs one extra product per right-hand side.
MAX_RESTARTS = 4


def _restarted_cg(mv, b, eta, cap2, max_steps, replace_every):
    k_rhs = b.shape[0]

    def cond(s):
        _, _, _, steps, _, passes, done = s
        return (~done) & (steps < max_steps) & (passes < MAX_RESTARTS + 1)

    def body(s):
        y, r, iters, steps, extra, passes, _ = s
        y, it, st, repl = _block_cg(mv, b, y, r, eta, cap2, max_steps - steps, replace_every)
        r = b - mv(y)
        rr = _dot(r, r)
        done = jnp.all(_stop(rr, _dot(b, y), eta, cap2) | (rr == 0))
        return y, r, iters + it, steps + st, extra + repl + 1, passes + 1, done

    zero = jnp.zeros((), jnp.int32)
    init = (jnp.zeros_like(b), b, jnp.zeros((k_rhs,), jnp.int32), zero, zero, zero, jnp.asarray(False))
    y, r, iters, steps, extra, _, _ = jax.lax.while_loop(cond, body, init)
    return y, r, iters, steps, extra


def _solve_setup(apply_fn, output_hessian, params, x_curv, sigma, damping):
    if output_hessian is None:
        output_hessian = smse_output_hessian(sigma)
    lin = linearize_ggn(apply_fn, params, x_curv, output_hessian=output_hessian)
    op = damped_operator(lin, damping)
    return lin, jax.vmap(op.mv)


def _finish(b, y, residual, iters, steps, eta, cap2, extra_products):
    rnorm2 = _dot(residual, residual)
    k_rhs = b.shape[0]
    return SolveResult(
        solution=y,
        residual=residual,
        residual_norm=jnp.sqrt(rnorm2),
        rhs_norm=jnp.sqrt(_dot(b, b)),
        iterations=iters,
        converged=_stop(rnorm2, _dot(b, y), eta, cap2),
        block_steps=steps,
        ggn_products=k_rhs * (steps + extra_products),
    )


@partial(jax.jit, static_argnums=(0, 1, 2))
def cg_solve_block(apply_fn, output_hessian, replace_every, params, x_curv, sigma, rhs, damping, eta, cap2, max_steps):
    """chi-solve a block ``rhs`` (K, P) with our CG and the energy-relative stopping rule."""
    _, mv = _solve_setup(apply_fn, output_hessian, params, x_curv, sigma, damping)
    b = rhs.astype(ravel_dtype(params))
    y, r, iters, steps, extra = _restarted_cg(mv, b, eta, cap2, max_steps, replace_every)
    return _finish(b, y, r, iters, steps, eta, cap2, extra)


@partial(jax.jit, static_argnums=(0, 1, 2))
def lineax_solve_block(apply_fn, output_hessian, max_steps, params, x_curv, sigma, rhs, damping, eta, cap2, rtol):
    """The same solve with ``lineax.CG`` (its own elementwise stopping rule), vmapped over RHS.

    Kept as an independent cross-check of our CG; the certification (explicit residual,
    bound, flag) is identical. ``lineax.CG`` stops when both the residual and the last
    step are below ``atol + rtol |.|`` elementwise in the max norm.
    """
    lin, mv = _solve_setup(apply_fn, output_hessian, params, x_curv, sigma, damping)
    op = damped_operator(lin, damping)
    b = rhs.astype(lin.flat_params.dtype)

    def one(bk):
        scale = jnp.max(jnp.abs(bk))
        solver = lx.CG(rtol=rtol, atol=rtol * scale, max_steps=max_steps)
        sol = lx.linear_solve(op, bk, solver, throw=False)
        return sol.value, sol.stats["num_steps"]

    y, iters = jax.vmap(one)(b)
    steps = jnp.max(iters)
    # lineax recomputes the residual every 10 steps (its stabilise_every default), and we
    # recompute it once more here.
    return _finish(b, y, b - mv(y), iters.astype(jnp.int32), steps, eta, cap2, steps // 10 + 1)


def ravel_dtype(params):
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.result_type(*leaves) if leaves else jnp.float32


def roundoff_allowance(rhs_norm, residual, rhs, n_params, dtype):
    """An allowance for floating-point error in the computed residual ``fl(b - A y)``.

    ``sqrt(P) eps (||b|| + ||A y||)`` with ``||A y|| = ||b - r||``: a model of the
    accumulated rounding in the operator application, added to the residual norm in the
    bound. It is not rigorous (docs/overlap.md says so); it keeps float32 runs honest,
    where the computed residual can be smaller than its own rounding error.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    ay = np.linalg.norm(np.asarray(rhs) - np.asarray(residual), axis=-1)
    return math.sqrt(n_params) * eps * (np.asarray(rhs_norm) + ay)


def chi_bilinear(u, z, r_u_norm, w, r_v, r_v_norm, damping):
    """Corrected ``u_i^T chi v_j ~ u_i . w_j + z_i . r_vj`` and its bound ``||r_ui|| ||r_vj|| / lambda``.

    Exact identity: ``u^T chi v = u^T w + z^T r_v + r_u^T chi r_v`` for ``w = chi(v - r_v)``,
    ``z = chi(u - r_u)``; the last term is bounded by ``||r_u|| ||r_v|| ||chi||_2`` and
    ``||chi||_2 = 1 / lambda_min(lambda I + G) <= 1 / lambda``.
    """
    # float64 on the host: the rounding of these P-term dot products is not in the bound.
    u, z, w, r_v = (np.asarray(a, dtype=np.float64) for a in (u, z, w, r_v))
    est = u @ w.T + z @ r_v.T
    bound = np.outer(r_u_norm, r_v_norm) / damping
    return est, bound


def chi_self(b, y, r, r_norm, damping):
    """``b^T chi b ~ b . y + y . r`` (per row), error ``r^T chi r`` in ``[0, ||r||^2 / lambda]``."""
    b, y, r = (np.asarray(a, dtype=np.float64) for a in (b, y, r))
    est = np.sum(b * y, axis=-1) + np.sum(y * r, axis=-1)
    return est, np.asarray(r_norm) ** 2 / damping


def ratio_interval_bound(num, num_bound, den_parts, den_bounds, *, sqrt_den):
    """Worst deviation of ``num / f(den)`` over the box of true values.

    ``num`` lies in ``[num - num_bound, num + num_bound]`` and each denominator part in
    ``[d - b, d + b]``; the denominator is the product of the parts (``sqrt`` of it when
    ``sqrt_den``). The ratio is monotone in every variable on the box (denominator > 0),
    so its extremes are at corners. Infinite where a denominator interval reaches 0.
    """
    num = np.asarray(num, dtype=np.float64)
    num_bound = np.asarray(num_bound, dtype=np.float64)
    den = np.ones_like(num)
    for d in den_parts:
        den = den * np.asarray(d, dtype=np.float64)
    value = num / (np.sqrt(den) if sqrt_den else den)
    worst = np.zeros_like(value)
    lows = [np.asarray(d) - np.asarray(b) for d, b in zip(den_parts, den_bounds)]
    highs = [np.asarray(d) + np.asarray(b) for d, b in zip(den_parts, den_bounds)]
    positive = np.ones(value.shape, dtype=bool)
    for lo in lows:
        positive &= lo > 0
    n_parts = len(den_parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        for s_num in (-1.0, 1.0):
            n = num + s_num * num_bound
            for corner in range(2**n_parts):
                d = np.ones_like(num)
                for k in range(n_parts):
                    d = d * (highs[k] if (corner >> k) & 1 else lows[k])
                c = n / (np.sqrt(d) if sqrt_den else d)
                worst = np.maximum(worst, np.abs(c - value))
    return value, np.where(positive & np.isfinite(worst), worst, np.inf)
