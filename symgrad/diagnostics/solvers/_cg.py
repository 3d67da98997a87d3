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

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.certify import CG_SAFETY, Targets, energy_residual_eta
from symgrad.diagnostics.solvers._base import ChiSolution, finish
from symgrad.names import DEFAULT_MAX_ITERATIONS

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


def _restarted_cg(product, b, eta, cap2, max_steps):
    """CG with restarts from the explicit residual; a ``ChiOperator.loop`` body:
    returns ``((y, iterations, loop trips, met), products used)``."""
    replace_every = RESIDUAL_REPLACEMENT_EVERY
    mv = product
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
    # every loop trip is one product per right-hand side of the block, frozen ones included
    return (y, iters, steps, _stop(rr, _dot(b, y), eta, cap2)), k_rhs * (steps + extra)


@dataclasses.dataclass(frozen=True)
class CG:
    """``--solver cg``: independent CG per right-hand side with the residual rule (baseline).

    ``max_steps``: CG steps per right-hand side at most. ``safety``: the residual rule's
    margin (``certify.CG_SAFETY``).
    """

    max_steps: int = DEFAULT_MAX_ITERATIONS
    safety: float = CG_SAFETY
    name = "cg"

    def solve(self, operator, rhs, targets: Targets, *, progress=None) -> ChiSolution:
        operator.rounding()  # estimated once, before this solve's count starts
        products_before = operator.products
        dtype = operator.dtype
        b = jnp.asarray(rhs, dtype)
        k = b.shape[0]
        caps = targets.residual_caps(k, operator.damping, self.safety)
        cap2 = jnp.full((k,), jnp.inf, dtype) if caps is None else jnp.asarray(caps, dtype) ** 2
        eta = jnp.asarray(energy_residual_eta(targets.rtol, operator.damping, self.safety), dtype)
        y, iters, steps, met = operator.loop(_restarted_cg, b, eta, cap2, jnp.asarray(self.max_steps, jnp.int32))
        if progress is not None:
            progress(int(steps), operator.products - products_before, np.nan)
        return finish(operator, b, y, targets, iterations=np.asarray(iters), products_before=products_before,
                      out_of_steps=int(steps) >= self.max_steps,
                      stats={"loop_trips": int(steps), "residual_rule_met": int(np.sum(np.asarray(met)))})
