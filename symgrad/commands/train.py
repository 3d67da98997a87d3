"""``symgrad train``: train a one-step surrogate, or continue a run that stopped."""

from __future__ import annotations

import argparse

from symgrad.commands._settings import FIELD_TYPES as _TYPES

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




def _config_flags():
    """``(field, option string, argparse keywords)`` of every TrainConfig field that is a flag."""
    from dataclasses import MISSING, fields

    from symgrad.train.config import TrainConfig

    for f in fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        meta = dict(f.metadata)
        group, flag = meta.pop("group"), meta.pop("flag")
        option = flag or "--" + f.name.replace("_", "-")
        if f.type == "bool":  # only switches that turn a default-on setting off
            kwargs = dict(action="store_false", dest=f.name)
        else:
            kwargs = dict(type=_TYPES[f.type], dest=f.name, **{k: v for k, v in meta.items() if k != "help"})
        default = f.default if f.default is not MISSING else None
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        if f.type == "bool":
            kwargs["help"] = meta["help"]
        else:
            kwargs["help"] = f"{meta['help']} (default: {shown if shown not in ('', ()) else 'none'})"
        yield f.name, group, option, kwargs


def register(parser: argparse.ArgumentParser) -> None:
    # Unset flags stay absent (SUPPRESS) so that a --config file is only overridden by the
    # flags actually given; the help shows TrainConfig's defaults, which apply without one.
    parser.argument_default = argparse.SUPPRESS
    groups = {}
    for title in ("model and data", "optimisation", "checkpoints and runs"):
        groups[title] = parser.add_argument_group(title)
    g = groups["model and data"]
    g.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="output run directory (checkpoints, metrics, TensorBoard events)")
    g.add_argument("--config", metavar="FILE.toml",
                   help="settings file, e.g. experiments/paper-unet.toml (default: none, the defaults shown here)")
    for _, group, option, kwargs in _config_flags():
        groups[group].add_argument(option, **kwargs)
    c = groups["checkpoints and runs"]
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="require a checkpoint in RUN_DIR to continue from (without it: continue if there is one)")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in RUN_DIR: discard it and start again")
    c.add_argument("--force", action="store_true",
                   help="resume even if the stored config differs materially (the new settings apply)")
    d = parser.add_argument_group("multi-process (also detected under SLURM)")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (default: from SLURM, or one process)")
    d.add_argument("--num-processes", type=int, help="number of processes (default: from SLURM, or 1)")
    d.add_argument("--process-id", type=int, help="this process's index, 0 ... N-1 (default: from SLURM, or 0)")


def config_from_args(args):
    """TrainConfig from defaults < ``--config`` TOML < explicit flags."""
    from symgrad.train.config import TrainConfig

    path = getattr(args, "config", None)
    config = TrainConfig.from_toml(path) if path else TrainConfig()
    overrides = {name: getattr(args, name, None) for name, *_ in _config_flags()}
    for name, value in overrides.items():
        if isinstance(value, list):
            overrides[name] = tuple(value)
    return config.with_overrides(**overrides)


def as_flag(name: str) -> str:
    """How the command line names the setting ``name`` of ``train`` (a TrainConfig field,
    or one of its arguments): its flag, or the key of a --config file."""
    flags = {field: option for field, _, option, _ in _config_flags()}
    flags.update(run_dir="--out", resume="--resume", overwrite="--overwrite", force="--force")
    return flags.get(name, f"'{name}' in the --config file")


def execute(args) -> int:
    from symgrad import preemption

    # SIGTERM from the first moment (a requeued SLURM job is pre-empted during its start-up
    # too): the run stops at its next safe point and the command exits with status 75.
    with preemption.stop_on_sigterm():
        return _execute(args)


def _execute(args) -> int:
    from symgrad import preemption
    from symgrad.errors import EXIT_PREEMPTED, SymgradError
    from symgrad.train import distributed
    from symgrad.errors import SettingError

    # Must precede every other jax call.
    distributed.initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                           getattr(args, "process_id", None))
    from symgrad.train import train

    config = config_from_args(args)
    if preemption.requested():  # SIGTERM while jax started: nothing was done yet
        print(f"preempted: before the start-up; rerun the same command to train {args.out}")
        return EXIT_PREEMPTED
    try:
        result = train(config, args.out, resume=getattr(args, "resume", None),
                       force=getattr(args, "force", False), overwrite=getattr(args, "overwrite", False))
    except SettingError as exc:  # the library names settings as fields; here they are flags
        raise SymgradError(exc.message(as_flag)) from None
    if distributed.is_primary():
        print(f"{result.status}: step {result.step}, {result.epoch} epochs completed; run in {result.run_dir}")
    return EXIT_PREEMPTED if result.status == "preempted" else 0
