"""Training of one-step surrogates: config, state, sharded step, checkpoints, loop, runs.

``train(config, run_dir)`` trains or resumes; ``load_run(run_dir)`` reads a run back for
the diagnostics. See ``docs/training.md``.
"""

from symgrad.train.checkpoint import Checkpointer
from symgrad.train.config import TrainConfig
from symgrad.train.distributed import initialize as initialize_distributed
from symgrad.train.loop import TrainResult, train, training_sigma
from symgrad.train.run import Run, load_run
from symgrad.train.state import TrainState, batch_indices, batch_order
from symgrad.train.step import (
    batch_loss, make_eval_fns, make_mesh, make_optimizer, make_train_step, train_step,
)

__all__ = [
    "Checkpointer", "Run", "TrainConfig", "TrainResult", "TrainState", "batch_indices",
    "batch_loss", "batch_order", "initialize_distributed", "load_run", "make_eval_fns",
    "make_mesh", "make_optimizer", "make_train_step", "train",
    "train_step", "training_sigma",
]
