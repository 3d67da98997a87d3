"""Reading a trained run back: what every diagnostic takes (``--run RUN_DIR``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from symgrad.errors import SymgradError
from symgrad.train.checkpoint import CONFIG_FILE, RUN_FILE, Checkpointer, read_json
from symgrad.train.config import TrainConfig
from symgrad.train.state import TrainState
from symgrad.train.step import make_optimizer


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained surrogate: ``apply_fn(params, x)`` is the physical one-step map
    ``sigma * model.apply(params, x / sigma)`` on conservative states ``(..., nx, ny, 4)``."""

    run_dir: Path
    apply_fn: Callable
    params: Any
    sigma: np.ndarray
    config: dict
    step: int
    model: Any
    weight_decay: float
    data_paths: tuple[str, ...]
    split: dict[str, np.ndarray]
    epoch: int
    opt_state: Any = None

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config)


def load_run(run_dir: str | Path, step: int | None = None) -> Run:
    """Load the checkpoint at ``step`` (default: the newest) of the run in ``run_dir``.

    Raises :class:`SymgradError` (saying what to do) when the directory, its JSON files or
    the checkpoint are missing or unreadable.
    """
    from symgrad.models import build_from_config, surrogate_apply

    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise SymgradError(f"run directory {run_dir} does not exist; train one with 'symgrad train --out'")
    config = TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE, "training config"))
    info = read_json(run_dir / RUN_FILE, "run description")
    sigma = np.asarray(info["sigma"], dtype=np.float64)
    model = build_from_config(info["model"]["config"])
    optimizer = make_optimizer(config, int(info["steps_per_epoch"]))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def abstract_state():
        params = jax.eval_shape(model.init, jax.random.key(0))
        opt_state = jax.eval_shape(optimizer.init, params)
        sds = lambda t: jax.tree.map(  # noqa: E731
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), t)
        return TrainState(sds(params), sds(opt_state),
                          jax.ShapeDtypeStruct((), np.int32, sharding=device),
                          jax.ShapeDtypeStruct((2,), np.uint32, sharding=device),
                          np.asarray(0, np.int32), np.asarray(0, np.int32))

    checkpointer = Checkpointer(run_dir, read_only=True)
    try:
        state, _ = checkpointer.restore(abstract_state(), step)
    finally:
        checkpointer.close()
    return Run(
        run_dir=run_dir,
        apply_fn=surrogate_apply(model.apply, sigma),
        params=state.params,
        sigma=sigma,
        config=config.to_dict(),
        step=int(np.asarray(state.step)),
        model=model,
        weight_decay=float(config.weight_decay),
        data_paths=tuple(info["data_paths"]),
        split={k: np.asarray(v, dtype=np.int64) for k, v in info["split"].items()},
        epoch=int(state.epoch),
        opt_state=state.opt_state,
    )
