"""``symgrad train``: train a one-step surrogate, or continue a run that stopped."""

from __future__ import annotations

import argparse

HELP = "train a surrogate (UNet, ViT, group CNN) on one-step transitions; resumes existing runs"
DESCRIPTION = (
    "Train a one-step surrogate with SMSE and AdamW on all transitions of the training "
    "trajectories, data-parallel over all devices, with orbax checkpoints in RUN_DIR. "
    "Settings come from the defaults (the paper study: lr 5e-4, weight decay 1e-6, batch 64, "
    "90 epochs), then --config FILE.toml, then the flags given. If RUN_DIR already holds a "
    "checkpoint the run continues from it (exactly: same batches, same result). SIGTERM "
    "(pre-emption) saves a checkpoint and exits with status 75; rerun the same command to "
    "continue. Exit status 0 means the run is complete."
)


def register(parser: argparse.ArgumentParser) -> None:
    # Unset flags stay absent (SUPPRESS) so that a --config file is only overridden by the
    # flags actually given; the effective defaults are shown in brackets.
    parser.argument_default = argparse.SUPPRESS
    m = parser.add_argument_group("model and data")
    m.add_argument("--model", choices=("unet", "vit", "gcnn"), help="architecture [unet]")
    m.add_argument("--preset", choices=("tiny", "small", "paper"), help="model size [tiny]")
    m.add_argument("--data", nargs="+", metavar="FILE.nc", help="dataset file(s), concatenated by trajectory")
    m.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, metrics)")
    m.add_argument("--config", metavar="FILE.toml", help="settings file, e.g. experiments/paper-unet.toml")
    m.add_argument("--seed", type=int, help="seed of init, split and batch order [0]")
    m.add_argument("--trajectories-per-file", type=int, metavar="K",
                   help="use the first K trajectories of each data file (the study: 5000) [0 = all]")
    m.add_argument("--time-indices", type=int, nargs="+", metavar="T",
                   help="stored time indices to use, increasing (the study: 0 ... 15); transitions are "
                        "their consecutive pairs [all]")
    m.add_argument("--data-cache", metavar="DIR",
                   help="convert the data once into a memory-mapped array in DIR and read batches from it "
                        "(~20x faster at 128x128; needs the data's uncompressed size on disk) [off]")
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="epochs [90]")
    o.add_argument("--batch-size", type=int, help="global batch size, a multiple of the device count [64]")
    o.add_argument("--lr", type=float, dest="learning_rate", help="peak learning rate [5e-4]")
    o.add_argument("--weight-decay", type=float, help="AdamW weight decay [1e-6]")
    o.add_argument("--schedule", choices=("constant", "cosine"), help="learning-rate schedule [constant]")
    o.add_argument("--warmup-steps", type=int, help="linear warm-up steps [0]")
    o.add_argument("--grad-clip", type=float, dest="grad_clip_norm", help="clip gradients to this global norm (0: off) [0]")
    o.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps (0: no limit)")
    c = parser.add_argument_group("checkpoints and runs")
    c.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (also at each epoch end) [500]")
    c.add_argument("--keep", type=int, help="checkpoints to keep [3]")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="require a checkpoint in RUN_DIR to continue from (default: continue if there is one)")
    mode.add_argument("--overwrite", action="store_true", help="discard the run in RUN_DIR and start again")
    c.add_argument("--force", action="store_true",
                   help="resume even if the stored config differs materially (the new settings apply)")
    c.add_argument("--no-progress", action="store_false", dest="progress",
                   help="no progress bar")
    c.add_argument("--log-every", type=int, metavar="N",
                   help="steps between TensorBoard points (RUN_DIR/tensorboard) of loss, learning rate, "
                        "gradient norm, samples/s and data-wait fraction [50]")
    d = parser.add_argument_group("multi-process (also detected under SLURM)")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    d.add_argument("--num-processes", type=int)
    d.add_argument("--process-id", type=int)
    parser.add_argument("--debug-nan-step", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--debug-step-delay", type=float, help=argparse.SUPPRESS)


_CONFIG_FLAGS = ("model", "preset", "data", "seed", "data_cache", "trajectories_per_file", "time_indices",
                 "epochs", "batch_size", "learning_rate", "weight_decay", "schedule", "warmup_steps",
                 "grad_clip_norm", "max_steps", "checkpoint_every", "keep", "progress", "log_every",
                 "debug_nan_step", "debug_step_delay")


def config_from_args(args):
    """TrainConfig from defaults < ``--config`` TOML < explicit flags."""
    from symgrad.train.config import TrainConfig

    path = getattr(args, "config", None)
    config = TrainConfig.from_toml(path) if path else TrainConfig()
    overrides = {name: getattr(args, name, None) for name in _CONFIG_FLAGS}
    for name in ("data", "time_indices"):
        if overrides[name] is not None:
            overrides[name] = tuple(overrides[name])
    return config.with_overrides(**overrides)


def run(args) -> int:
    from symgrad.errors import EXIT_PREEMPTED
    from symgrad.train import distributed

    # Must precede every other jax call.
    distributed.initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                           getattr(args, "process_id", None))
    from symgrad.train.loop import train

    config = config_from_args(args)
    result = train(config, args.out, resume=getattr(args, "resume", None),
                   force=getattr(args, "force", False), overwrite=getattr(args, "overwrite", False))
    if distributed.is_primary():
        print(f"{result.status}: step {result.step}, {result.epoch} epochs completed; run in {result.run_dir}")
    return EXIT_PREEMPTED if result.status == "preempted" else 0
