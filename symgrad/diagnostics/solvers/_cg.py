"""``--solver cg``: the part-1 engine, kept as the baseline the fast path is measured against.

K independent conjugate-gradient recurrences advanced in one jitted ``lax.while_loop``
(every step one batched Gauss-Newton product); a right-hand side that met its rule is
frozen while the others continue. The rule is on residuals (``certify.energy_residual_eta``
and, for u-solves, ``certify.frobenius_residual_cap``), and the bound is the residual bound
``||r||^2 / lambda``, which over-solves by up to the condition number: that is the point
of keeping it, as the reference cost. Residual replacement every 50 steps; restarts from
the explicit residual when the recursive one drifted.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.certify import CG_SAFETY, energy_residual_eta
from symgrad.diagnostics.solvers._base import ChiSolution, SolverBase, finish

# Recompute the residual b - A y explicitly every this many CG steps ("residual
# replacement"), so that the recursive residual that drives the stopping rule does not
# drift away from the true one over thousands of steps.
RESIDUAL_REPLACEMENT_EVERY = 50
# CG restarts from the explicit residual when the recursive one met the rule but the
# explicit one does not; each restart costs one product per right-hand side.
MAX_RESTARTS = 4


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _stop(rr, bty, eta, cap2):
    # ||r||^2 <= eta b^T y, eta = safety rtol lambda (certify.energy_residual_eta), and the
    # absolute cap ||r||^2 <= cap2 of the u-solves (certify.frobenius_residual_cap).
    return (rr <= eta * jnp.maximum(bty, 0.0)) & (rr <= cap2)


def _block_cg(mv, b, y0, r0, eta, cap2, max_steps, replace_every):
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
        r = jax.lax.cond(step % replace_every == 0, lambda: b - mv(y), lambda: r - alpha[:, None] * ap)
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


@partial(jax.jit, static_argnums=(0, 1))
def _restarted_cg(traced_product, replace_every, state, b, eta, cap2, max_steps):
    mv = partial(traced_product, state)
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
    rr = _dot(r, r)
    return y, iters, steps, extra, _stop(rr, _dot(b, y), eta, cap2)


class CGSolver(SolverBase):
    """``--solver cg``: independent CG per right-hand side with the residual rule (baseline)."""

    name = "cg"

    def solve(self, operator, rhs, stop=None, *, residual_cap=None, progress=None) -> ChiSolution:
        st = self.settings
        safety = CG_SAFETY if st.safety is None else st.safety
        products_before = operator.products
        dtype = operator.dtype
        b = jnp.asarray(rhs, dtype)
        k = b.shape[0]
        cap2 = jnp.full((k,), jnp.inf, dtype) if residual_cap is None else (
            jnp.broadcast_to(jnp.asarray(residual_cap, dtype), (k,)) ** 2)
        eta = jnp.asarray(energy_residual_eta(st.rtol, operator.damping, safety), dtype)
        y, iters, steps, extra, met = _restarted_cg(
            operator.traced_product, RESIDUAL_REPLACEMENT_EVERY, operator.state, b, eta, cap2,
            jnp.asarray(st.max_iterations, jnp.int32))
        # every loop trip is one product per right-hand side of the block, frozen ones included
        operator.products += int(k * (int(steps) + int(extra)))
        if progress is not None:
            progress(int(steps), operator.products - products_before, np.nan)
        return finish(operator, b, y, iterations=np.asarray(iters), converged=np.asarray(met),
                      products_before=products_before, stats={"loop_trips": int(steps)})
