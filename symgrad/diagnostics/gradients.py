"""Per-example loss gradients, flattened to vectors (docs/design.md section 5).

``u_i^g = grad_theta L(g.x_i, g.y_i)`` and ``v_j = grad_theta L(x_j, y_j)`` are rows of an
``(N, P)`` array: the overlap engine works on flat parameter vectors (``ravel_pytree``
order), because the chi-solves, residuals and inner products are all plain vector algebra.

Memory: the gradients are computed ``chunk_size`` samples at a time with ``jax.lax.map``,
so the peak extra memory is ``chunk_size`` backward passes, not ``N``; the ``(N, P)``
output itself is unavoidable (it is what the overlaps are made of).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from symgrad.loss import smse

# apply_fn(params, x) -> y with x, y of shape (batch, nx, ny, c).
ApplyFn = Callable[[PyTree, Array], Array]
# loss_fn(pred, target) -> per-sample loss of shape (batch,).
LossFn = Callable[[Array, Array], Array]


def smse_loss(sigma) -> LossFn:
    """The SMSE of docs/design.md section 4 as a ``loss_fn(pred, target) -> (batch,)``."""
    return lambda pred, target: smse(pred, target, sigma)


def per_example_loss(apply_fn: ApplyFn, loss_fn: LossFn) -> Callable[[PyTree, Array, Array], Array]:
    """``L(params, x, y)`` for one unbatched sample ``x, y`` of shape ``(nx, ny, c)``."""

    def loss(params, x, y):
        pred = apply_fn(params, x[None])
        return loss_fn(pred, y[None])[0]

    return loss


def flat_gradient(apply_fn: ApplyFn, loss_fn: LossFn) -> Callable[[PyTree, Array, Array], Array]:
    """``(params, x, y) -> ravel_pytree(grad_theta L(x, y))`` for one sample."""
    grad = jax.grad(per_example_loss(apply_fn, loss_fn))

    def flat(params, x, y):
        return ravel_pytree(grad(params, x, y))[0]

    return flat


def per_example_gradients(
    apply_fn: ApplyFn,
    params: PyTree,
    x: Float[Array, "n nx ny c"],
    y: Float[Array, "n nx ny c"],
    sigma=None,
    *,
    loss_fn: LossFn | None = None,
    chunk_size: int | None = 8,
) -> Float[Array, "n p"]:
    """Flat per-sample loss gradients ``grad_theta L(x_i, y_i)``, one row per sample.

    ``loss_fn`` defaults to SMSE with ``sigma``. ``chunk_size`` samples are vmapped at a
    time (``jax.lax.map(..., batch_size=chunk_size)``); ``None`` vmaps all at once.
    Row order is sample order; column order is ``ravel_pytree(params)`` order. Compiled
    once per ``(apply_fn, loss_fn, shapes)``: pass the same function objects to reuse it.
    """
    if loss_fn is None and sigma is None:
        raise ValueError("per_example_gradients needs sigma (SMSE) or a loss_fn")
    sig = None if sigma is None else jnp.asarray(sigma)
    chunk = None if chunk_size is None or chunk_size >= x.shape[0] else int(chunk_size)
    return _gradients_jit(apply_fn, loss_fn, chunk, params, x, y, sig)


def _gradients(apply_fn, loss_fn, chunk_size, params, x, y, sigma):
    if loss_fn is None:
        loss_fn = smse_loss(sigma)
    one = flat_gradient(apply_fn, loss_fn)
    fn = lambda xy: one(params, xy[0], xy[1])  # noqa: E731
    if chunk_size is None:
        return jax.vmap(fn)((x, y))
    return jax.lax.map(fn, (x, y), batch_size=chunk_size)


_gradients_jit = jax.jit(_gradients, static_argnums=(0, 1, 2))
