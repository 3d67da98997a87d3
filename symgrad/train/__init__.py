"""Training of one-step surrogates: config, state, sharded step, checkpoints, setup, loop,
evaluators, metrics, runs.

``train(config, run_dir)`` trains or resumes; ``load_run(run_dir)`` reads a run back for
the diagnostics. See ``docs/training.md``.
"""

from typing import TYPE_CHECKING

from symgrad.train.config import TrainConfig as TrainConfig

# The rest imports jax and orbax, so it loads on first use: the command line builds its
# flags from TrainConfig without them, and `symgrad --help` answers at once.
_LAZY = {
    "train": "loop", "TrainResult": "loop", "training_sigma": "setup", "read_metrics": "metrics",
    "TrainedModel": "run", "RunInfo": "run", "load_run": "run",
    "Checkpointer": "checkpoint",
    "TrainState": "state", "batch_indices": "state", "batch_order": "state",
}

if TYPE_CHECKING:
    from symgrad.train.checkpoint import Checkpointer as Checkpointer
    from symgrad.train.loop import TrainResult as TrainResult
    from symgrad.train.loop import train as train
    from symgrad.train.metrics import read_metrics as read_metrics
    from symgrad.train.run import TrainedModel as TrainedModel
    from symgrad.train.run import RunInfo as RunInfo
    from symgrad.train.run import load_run as load_run
    from symgrad.train.state import TrainState as TrainState
    from symgrad.train.state import batch_indices as batch_indices
    from symgrad.train.setup import training_sigma as training_sigma
    from symgrad.train.state import batch_order as batch_order


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"symgrad.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'symgrad.train' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = ["Checkpointer", "Run", "RunInfo", "TrainConfig", "TrainResult", "TrainState", "batch_indices",
           "batch_order", "load_run", "read_metrics", "train", "training_sigma"]
