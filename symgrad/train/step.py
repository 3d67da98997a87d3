"""The pure training step and its sharded, jitted form.

One code path for 1 and N devices: a 1-D mesh ``("data",)`` over all devices; the batch
is sharded along its leading axis, parameters and optimiser state are replicated. XLA
inserts the gradient all-reduce. No pmap.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from symgrad.loss import smse
from symgrad.train.state import TrainState

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh over all (global) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def learning_rate_schedule(config, steps_per_epoch: int):
    """The config's learning rate: a float (constant, no warm-up) or an optax schedule of the step."""
    lr = config.learning_rate
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=config.warmup_steps,
            decay_steps=max(total, config.warmup_steps + 1), end_value=0.0,
        )
    elif config.warmup_steps > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, config.warmup_steps), optax.constant_schedule(lr)],
            [config.warmup_steps],
        )
    else:
        schedule = lr
    return schedule


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW with the config's learning-rate schedule and optional global-norm clipping."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    return optax.chain(*parts)


def batch_loss(apply_fn: Callable, params, x, y, sigma) -> jax.Array:
    """Mean SMSE over the batch of the physical one-step map ``apply_fn``."""
    return jnp.mean(smse(apply_fn(params, x), y, sigma))


def relaxation_penalty(config) -> Callable | None:
    """The penalty the relaxed model trains with, ``params -> relaxation_weight *
    coefficient_spread(params)`` (docs/training.md); None for the other models or a zero weight."""
    if config.model != "relaxed" or config.relaxation_weight == 0:
        return None
    from symgrad.models import coefficient_spread

    weight = float(config.relaxation_weight)
    return lambda params: weight * coefficient_spread(params)


def train_step(
    state: TrainState, x, y, *, apply_fn: Callable, optimizer: optax.GradientTransformation, sigma,
    penalty: Callable | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on the batch ``(x, y)`` (physical states, ``(B, nx, ny, 4)``) of the
    SMSE plus ``penalty(params)`` when given (:func:`relaxation_penalty`); ``metrics["loss"]``
    is the SMSE.

    If the loss or the gradient is not finite the returned state equals the input state
    (``metrics["finite"]`` is False): the caller stops and checkpoints the last good state
    instead of training on NaN.
    """

    def objective(p):
        loss = batch_loss(apply_fn, p, x, y, sigma)
        return (loss if penalty is None else loss + penalty(p)), loss

    (total, loss), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1))
    new = state._replace(
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        step=jnp.where(finite, state.step + 1, state.step),
        rng=jnp.where(finite, rng, state.rng),
    )
    return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def make_train_step(apply_fn: Callable, optimizer, sigma, mesh: Mesh, penalty: Callable | None = None) -> Callable:
    """Jit :func:`train_step` over ``mesh``: ``step_fn(state, x, y) -> (state, metrics)``.

    ``x``/``y`` must be global arrays sharded with :func:`batch_sharding` (see
    ``symgrad.train.distributed.global_batch``). The device part of the state is donated.
    """
    repl, data = replicated_sharding(mesh), batch_sharding(mesh)
    sigma = np.asarray(sigma, dtype=np.float32)

    def device_step(params, opt_state, step, rng, x, y):
        state = TrainState(params, opt_state, step, rng)
        new, metrics = train_step(state, x, y, apply_fn=apply_fn, optimizer=optimizer, sigma=sigma,
                                  penalty=penalty)
        return (new.params, new.opt_state, new.step, new.rng), metrics

    jitted = jax.jit(
        device_step,
        in_shardings=(repl, repl, repl, repl, data, data),
        out_shardings=((repl, repl, repl, repl), repl),
        donate_argnums=(0, 1),
    )

    def step_fn(state: TrainState, x, y):
        (p, o, s, r), metrics = jitted(state.params, state.opt_state, state.step, state.rng, x, y)
        return state._replace(params=p, opt_state=o, step=s, rng=r), metrics

    step_fn.jitted = jitted  # for cost analysis (benchmarks)
    return step_fn


def make_eval_fns(apply_fn: Callable, sigma, mesh: Mesh):
    """Sharded evaluation: masked one-step SMSE sums and masked rollout SMSE per lead time."""
    repl, data = replicated_sharding(mesh), batch_sharding(mesh)
    sigma = np.asarray(sigma, dtype=np.float32)

    def one_step(params, x, y, mask):
        per = smse(apply_fn(params, x), y, sigma)
        return jnp.sum(jnp.where(mask, per, 0.0)), jnp.sum(mask)

    def rollout(params, traj, mask):
        # traj (B, T, nx, ny, 4): roll out from t=0, SMSE against the truth at t=1..T-1.
        def body(q, truth):
            q = apply_fn(params, q)
            return q, smse(q, truth, sigma)

        _, err = jax.lax.scan(body, traj[:, 0], jnp.moveaxis(traj[:, 1:], 1, 0))  # (T-1, B)
        err = jnp.where(jnp.isfinite(err), err, jnp.inf)
        return jnp.sum(jnp.where(mask[None, :], err, 0.0), axis=1), jnp.sum(mask)

    one_step_j = jax.jit(one_step, in_shardings=(repl, data, data, data), out_shardings=repl)
    rollout_j = jax.jit(rollout, in_shardings=(repl, data, data), out_shardings=repl)
    return one_step_j, rollout_j
