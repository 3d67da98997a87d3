"""The run directory: its layout, what ``train`` writes there and ``load_run`` reads back.

Layout of a run directory (this module is the one place that names its files)::

    RUN_DIR/config.json        TrainConfig (what was asked for)
    RUN_DIR/run.json           RunInfo: sigma, split, data selection, model config (what it means)
    RUN_DIR/checkpoints/<step>/{state,extra}   orbax (symgrad.train.checkpoint)
    RUN_DIR/status.json        running | finished | max_steps | preempted | failed | non-finite
    RUN_DIR/metrics.{nc,csv,json}  one row per epoch, the archival record (symgrad.train.metrics)
    RUN_DIR/tensorboard/       event files, written by the primary process
    RUN_DIR/lock               held by the process training in the directory
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from symgrad.errors import SettingError, SymgradError
from symgrad.io import write_json_atomic
from symgrad.train.checkpoint import Checkpointer, checkpoint_dir
from symgrad.train.config import TrainConfig

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
STATUS_FILE = "status.json"
METRICS_JSON = "metrics.json"
METRICS_NC = "metrics.nc"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = "lock"  # symgrad.io.ExclusiveLock: one writer per run
SPLIT_RANDOM, SPLIT_WELL = "random", "the-well-directories"  # RunInfo.split_source
RUN_FORMAT_VERSION = 3  # 2: TrainState without epoch/position (they follow from the step);
#                        3: first_trajectories (of each --data entry) replaces trajectories_per_file


def read_json(path: str | Path, what: str, expect: type | None = None):
    """The JSON of ``path``; ``expect`` (dict, list) is the type it must hold."""
    path = Path(path)
    try:
        with open(path) as fh:
            value = json.load(fh)
        if expect is not None and not isinstance(value, expect):
            raise SymgradError(f"{path} is corrupt (it holds {type(value).__name__} {str(value)[:40]}, not the "
                               f"{what}); restore it or retrain into a new --out")
        return value
    except FileNotFoundError:
        raise SymgradError(
            f"{path} is missing, so {path.parent} is not a complete symgrad run directory; "
            f"point to the directory given to 'symgrad train --out' ({what})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SymgradError(f"{path} is corrupt ({exc}); restore it or retrain into a new --out") from None


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a run means beyond its config, fixed when it starts: ``train`` writes it to
    ``run.json`` and every later reader (a resume, :func:`load_run`) takes it from there, so
    ``sigma`` and the split are never recomputed."""

    sigma: tuple[float, ...]  # SMSE scales of the training targets (symgrad.loss.channel_scales)
    split: dict[str, np.ndarray]  # "train"/"val"/"test": trajectory indices into the data files
    n_samples: int  # trajectories in the data files (all of them, selected or not)
    n_times: int  # stored times per trajectory
    time_indices: tuple[int, ...]  # the selected times; transitions are consecutive pairs
    first_trajectories: int  # of each --data entry; 0 = all
    resolution: int
    data_paths: tuple[str, ...]
    model: dict[str, Any]  # {"name", "preset", "config"}: symgrad.models.build_from_config
    n_train_transitions: int
    steps_per_epoch: int
    weight_decay: float
    n_devices: int
    n_processes: int
    # SHA-256 of each data file, by resolved path, in the order of the data (empty in runs
    # of older symgrad versions): a resume refuses changed data, and the diagnostics
    # recognise the training data by content (symgrad.inputs)
    data_digests: dict[str, str] = dataclasses.field(default_factory=dict)
    # where the split comes from: SPLIT_RANDOM (seed and split_fractions over the selected
    # trajectories) or SPLIT_WELL (The Well's own train/valid/test directories)
    split_source: str = "random"
    format_version: int = RUN_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["split"] = {k: np.asarray(v).tolist() for k, v in self.split.items()}
        # [path, digest] pairs: the order is the data's, which a JSON object written with sorted
        # keys would lose (data_10.nc before data_2.nc; The Well's test/ before train/)
        d["data_digests"] = [[p, digest] for p, digest in self.data_digests.items()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | Path = RUN_FILE) -> RunInfo:
        if not isinstance(d, dict):
            raise SymgradError(f"{path} is corrupt (it holds {type(d).__name__} {str(d)[:40]}, not the run's "
                               "description); restore it or retrain into a new --out")
        version = d.get("format_version")
        if version != RUN_FORMAT_VERSION:
            raise SymgradError(
                f"run.json has format version {version}, this symgrad reads version {RUN_FORMAT_VERSION}; "
                "retrain the run with this version (symgrad train --overwrite)")
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        try:
            return cls(**{**d, "sigma": tuple(float(s) for s in d["sigma"]),
                          "split": {k: np.asarray(v, dtype=np.int64) for k, v in d["split"].items()},
                          "time_indices": tuple(int(t) for t in d["time_indices"]),
                          "data_paths": tuple(d["data_paths"]),
                          "data_digests": dict(d.get("data_digests") or {})})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SymgradError(f"{path} is corrupt ({type(exc).__name__}: {exc}); restore it or retrain into "
                               "a new --out") from None

    def write(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / RUN_FILE, self.to_dict())

    @classmethod
    def read(cls, run_dir: Path) -> RunInfo:
        return cls.from_dict(read_json(run_dir / RUN_FILE, "run description", dict), run_dir / RUN_FILE)


def data_digests(paths) -> dict[str, str]:
    """SHA-256 of each data file, by resolved path (what ``run.json`` records)."""
    from symgrad.io import file_digest

    return {str(Path(p).resolve()): file_digest(p) for p in paths}


def changed_data(recorded: dict[str, str], now: dict[str, str]) -> str | None:
    """Why the data files whose digests are ``now`` (``data_digests``) are not the ones whose
    digests are ``recorded`` (the same contents in the same order, wherever they now lie), or
    None when they are."""
    if not recorded:  # a run of an older symgrad: only its sample count is compared
        return None
    if list(now.values()) == list(recorded.values()):
        return None
    if len(now) != len(recorded):
        return f"the run was trained on {len(recorded)} data files, these are {len(now)}"
    for (old_path, old), (new_path, new) in zip(recorded.items(), now.items()):
        if old != new:
            same = old_path == new_path
            return (f"{new_path} has changed since the run started (its SHA-256 differs from the one in run.json)"
                    if same else f"{new_path} is not the file the run was trained on ({old_path}): their contents "
                    "differ")
    return None


def read_config(run_dir: Path) -> TrainConfig:
    """The run's training config; a run of an older format is refused by its run.json first,
    with what to do, rather than by a config key this version no longer knows."""
    if (run_dir / RUN_FILE).exists():
        RunInfo.read(run_dir)
    return TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE, "training config", dict))


def write_config(run_dir: Path, config: TrainConfig) -> None:
    write_json_atomic(run_dir / CONFIG_FILE, config.to_dict())


def write_status(run_dir: Path, status: str, **info) -> None:
    write_json_atomic(run_dir / STATUS_FILE, {"status": status, **info})


# --------------------------------------------------------------------------------------
# starting or continuing a run


def discard(run_dir: Path) -> None:
    """Remove a run's files (not the lock): ``overwrite``, or a run with nothing trained."""
    for name in (CONFIG_FILE, RUN_FILE, STATUS_FILE, METRICS_JSON, METRICS_JSON + ".damaged", METRICS_NC, METRICS_CSV):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)


def _differences(config: TrainConfig, stored: TrainConfig) -> str:
    return ", ".join(f"{k}: stored {old!r} != given {new!r}"
                     for k, (old, new) in config.material_differences(stored).items())


def prepare(run_dir: Path, config: TrainConfig, resume: bool | None, force: bool, overwrite: bool,
            primary: bool) -> RunInfo | None:
    """Decide between a fresh start and a resume: the stored :class:`RunInfo` to resume
    with, or ``None`` for a fresh start (after discarding what ``overwrite`` or a run killed
    before its first checkpoint left). Refusals say what to do."""
    if primary:  # temporary files of a process killed while writing (we hold the run's lock)
        for stale in run_dir.glob(".*.tmp-*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
    ckpt = Checkpointer(run_dir, keep=config.keep, read_only=True)
    has_ckpt = bool(ckpt.steps())
    ckpt.close()
    started = (run_dir / CONFIG_FILE).exists() or (run_dir / RUN_FILE).exists()
    if overwrite:
        if resume:
            raise SettingError("{resume} and {overwrite} contradict each other; choose one")
        if primary:
            discard(run_dir)
        return None
    if resume is False:
        if has_ckpt or started:
            raise SettingError(
                f"{run_dir} already holds a run; resume it (default), or pass {{overwrite}} to "
                "discard it, or choose a new {run_dir}")
        return None
    if not has_ckpt:
        if resume:
            raise SettingError(f"{{resume}} given but {checkpoint_dir(run_dir)} has no checkpoint; "
                               "drop {resume} to start a new run")
        # status.json is written only after a checkpoint (and removed again when a run
        # stops before its first one): without it the run died before its first save (a
        # kill -9, a full disk) and nothing was kept. metrics.json is no such sign: the
        # first epoch's record is written before the checkpoint that ends the epoch.
        trained = (run_dir / STATUS_FILE).exists()
        if started and trained:
            raise SettingError(
                f"{run_dir} holds a trained run but no checkpoint (they were deleted); pass "
                "{overwrite} to start it again from scratch, or choose a new {run_dir}")
        if started:
            # Killed before its first checkpoint: the same command starts it again (a
            # requeued cluster job must not fail here). Other settings would silently
            # replace the recorded run: refuse those.
            diffs = _differences(config, read_config(run_dir)) if (run_dir / CONFIG_FILE).exists() else ""
            if diffs:
                raise SettingError(
                    f"{run_dir} holds a run that stopped before its first checkpoint, with a different "
                    f"config ({diffs}); use the same settings, {{overwrite}} to start anew, or a new {{run_dir}}")
            if primary:
                discard(run_dir)
        return None
    diffs = _differences(config, read_config(run_dir))
    if diffs and not force:
        raise SettingError(
            f"{run_dir} holds a run with a different config ({diffs}); use the same settings "
            "to resume, {force} to resume with the new ones, {overwrite} to restart, or a new {run_dir}")
    return RunInfo.read(run_dir)


def record_failure(run_dir: Path, exc: BaseException, last_step: int | None) -> None:
    """``status.json`` after training stopped on an error: never a stale "running".

    A status that already explains the stop (the non-finite report) is kept. Otherwise, with
    a checkpoint to resume from, it says "failed" (or "interrupted"), why, and the step a rerun
    resumes from. Without one, or when even this small file cannot be written (a full disk),
    it is removed: a rerun then restarts or resumes from the checkpoints, as after a kill."""
    path = run_dir / STATUS_FILE
    try:
        if read_json(path, "run status", dict).get("status") != "running":
            return
    except SymgradError:  # missing or unreadable: nothing to keep
        pass
    if last_step is not None:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        try:
            write_status(run_dir, status, reason=str(exc) or type(exc).__name__, resume_step=last_step)
            return
        except SymgradError:
            pass
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# reading a trained run back: what every diagnostic takes (--run RUN_DIR)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained surrogate read from one checkpoint of a run directory: ``apply_fn(params, x)``
    is the physical one-step map
    ``sigma * model.apply(params, x / sigma)`` on conservative states ``(..., nx, ny, 4)``."""

    run_dir: Path
    apply_fn: Callable
    params: Any
    sigma: np.ndarray
    config: dict
    step: int
    model: Any
    epoch: int  # epochs completed
    info: RunInfo  # weight decay, data files, split, ...: what the run means (run.json)
    opt_state: Any = None

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config)


def load_run(run_dir: str | Path, step: int | None = None) -> TrainedModel:
    """Load the checkpoint at ``step`` (default: the newest) of the run in ``run_dir``.

    Raises :class:`SymgradError` (saying what to do) when the directory, its JSON files or
    the checkpoint are missing or unreadable.
    """
    import jax

    from symgrad.models import build_from_config, surrogate_apply
    from symgrad.train.state import abstract_state
    from symgrad.train.step import make_optimizer

    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise SymgradError(f"run directory {run_dir} does not exist; train one with 'symgrad train --out'")
    config = read_config(run_dir)
    info = RunInfo.read(run_dir)
    sigma = np.asarray(info.sigma, dtype=np.float64)
    model = build_from_config(info.model["config"])
    optimizer = make_optimizer(config, info.steps_per_epoch)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    checkpointer = Checkpointer(run_dir, read_only=True)
    try:
        state, _ = checkpointer.restore(abstract_state(model, optimizer, device), step)
    finally:
        checkpointer.close()
    at = int(np.asarray(state.step))
    return TrainedModel(
        run_dir=run_dir,
        apply_fn=surrogate_apply(model.apply, sigma),
        params=state.params,
        sigma=sigma,
        config=config.to_dict(),
        step=at,
        model=model,
        epoch=at // info.steps_per_epoch,
        info=info,
        opt_state=state.opt_state,
    )
