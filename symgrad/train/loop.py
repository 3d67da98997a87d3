"""The training loop: one flat loop over global steps (as in big_vision's ``train.py``).

:func:`train` takes the run's lock, makes everything with :func:`symgrad.train.setup.setup`
and runs :func:`_loop`. Where the data stand follows from the step alone (``epoch,
position = divmod(step, steps_per_epoch)``); small "is it time to ..." helpers decide when
to evaluate, checkpoint and log, and module functions with explicit arguments do it. The
math is in :mod:`symgrad.train.step`, the evaluators in :mod:`symgrad.train.evaluate`, the
metrics in :mod:`symgrad.train.metrics`, the run directory in :mod:`symgrad.train.run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from symgrad import preemption
from symgrad.errors import SettingError, SymgradError
from symgrad.io import ExclusiveLock
from symgrad.train import distributed, run
from symgrad.train.config import TrainConfig
from symgrad.train.setup import NEW_EPOCH, Setup, setup
from symgrad.train.state import TrainState, all_finite, batch_indices


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a call of :func:`train` ended: ``status`` is ``finished``, ``max_steps`` or
    ``preempted`` (SIGTERM); non-finite values raise instead."""

    status: str
    step: int
    epoch: int
    run_dir: Path
    final_train_smse: float | None
    state: TrainState | None = None


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool | None = None,
    force: bool = False,
    overwrite: bool = False,
    log=print,
) -> TrainResult:
    """Train (or continue) the run in ``run_dir``.

    ``resume=None``: continue if ``run_dir`` holds a checkpoint, else start; ``True``:
    require a checkpoint; ``False``: require a fresh directory. A stored config that
    differs materially is refused unless ``force``. ``overwrite`` discards an existing run.
    Raises :class:`SymgradError` on non-finite loss/gradients after checkpointing the last
    good state, or when another process trains in ``run_dir`` (one writer per run: the
    primary process holds ``LOCK_FILE`` while it trains).
    """
    run_dir = Path(run_dir).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise SettingError(f"{{run_dir}} {run_dir} is a file; give a directory for the run (a new one, or one "
                           "that holds a run to continue)")
    # SIGTERM from here on, the start-up included, stops cleanly (status "preempted").
    with preemption.stop_on_sigterm():
        if not distributed.is_primary():  # one voice per run: only the primary process logs
            return _train(config, run_dir, resume, force, overwrite, log=lambda *args, **kwargs: None)
        existed = run_dir.exists()
        try:
            with ExclusiveLock(run_dir / run.LOCK_FILE, f"run directory {run_dir}"):
                return _train(config, run_dir, resume, force, overwrite, log=log)
        finally:
            if not existed:  # a start refused before it wrote anything leaves no empty run directory
                with contextlib.suppress(OSError):
                    run_dir.rmdir()


def _train(config, run_dir: Path, resume, force, overwrite, log) -> TrainResult:
    try:
        s = setup(config, run_dir, resume=resume, force=force, overwrite=overwrite, log=log)
    except preemption.Preempted:  # SIGTERM during the start-up: nothing half-done was written
        from symgrad.train.checkpoint import Checkpointer

        checkpointer = Checkpointer(run_dir, read_only=True)
        step = checkpointer.latest_step() or 0
        checkpointer.close()
        log(f"stopped (preempted) during the start-up, at step {step}; rerun the same command to continue")
        return TrainResult("preempted", step, 0, run_dir, None)
    try:
        return _loop(s, log)
    except BaseException as exc:
        if s.primary:
            with contextlib.suppress(Exception):  # never hide the error that stopped training
                run.record_failure(run_dir, exc, s.checkpointer.latest_step())
        raise
    finally:
        s.close()


# --------------------------------------------------------------------------------------
# the loop


def _loop(s: Setup, log) -> TrainResult:
    """One step per iteration, from the state's step to ``s.last_step``."""
    state, extra, step = s.state, s.extra, s.start_step
    status, last_loss = None, None  # status: "preempted" when stopped early; else decided at the end
    clock = _EpochClock()
    batches = _Batches(s)
    bar = _progress_bar(s, step)
    try:
        with preemption.stop_on_sigterm():
            while step < s.last_step:
                if _all_agree_to_stop(preemption.requested()):
                    status = "preempted"
                    break
                idx, x, y, waited = batches.get(step)
                new_state, metrics = s.step_fn(state, x, y)
                if not bool(distributed.fetch(metrics["finite"])):
                    _fail_non_finite(s, new_state, extra, step, idx, metrics)  # new_state: the last good one
                state, step = new_state, step + 1
                last_loss = float(distributed.fetch(metrics["loss"]))
                extra = _add_loss(extra, last_loss)
                clock.count(s.config.batch_size)
                s.metrics.count(s.config.batch_size, waited)
                if s.primary and _every(step, s.config.log_every):
                    s.metrics.point(step, last_loss, float(distributed.fetch(metrics["grad_norm"])))
                _show(bar, s, step, last_loss, clock)
                if _every(step, s.steps_per_epoch):
                    _end_epoch(s, state.params, extra, step, clock, log)
                    extra = dict(NEW_EPOCH)
                    _save(s, state, extra, step, "running")
                    clock.restart()
                elif _every(step, s.config.checkpoint_every):
                    _save(s, state, extra, step, "running")
            status = status or ("finished" if step >= s.total_steps else "max_steps")
            _save(s, state, extra, step, status)
            if status != "finished":
                log(f"stopped ({status}) at step {step}; checkpoint saved in {s.checkpointer.directory}; "
                    "rerun the same command to continue")
    finally:
        bar.close()
        batches.close()
    return TrainResult(status, step, step // s.steps_per_epoch, s.run_dir, last_loss, state)


# --------------------------------------------------------------------------------------
# "is it time to ...", and what the loop does then


def _every(step: int, n: int) -> bool:
    return n > 0 and step % n == 0


def _all_agree_to_stop(requested: bool) -> bool:
    """Whether any process got SIGTERM, on every process alike."""
    return distributed.any_process(requested)


def _add_loss(extra: dict, loss: float) -> dict:
    return {"epoch_loss_sum": extra["epoch_loss_sum"] + loss, "epoch_loss_count": extra["epoch_loss_count"] + 1}


class _EpochClock:
    """Seconds and samples since the epoch (or this call's part of it) began."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.start, self.samples = time.perf_counter(), 0

    def count(self, samples: int) -> None:
        self.samples += samples

    def seconds(self) -> float:
        return time.perf_counter() - self.start


class _Batches:
    """This process's share of the batch of each step, as global arrays: the next batch
    is loaded while a step computes, never across an epoch end (where the evaluation reads
    the files)."""

    def __init__(self, s: Setup):
        self.source, self.sharding = s.data.train, s.data_sharding
        self.seed, self.batch, self.steps_per_epoch = s.config.seed, s.config.batch_size, s.steps_per_epoch
        self.last_step, self.local = s.last_step, distributed.local_slice(s.config.batch_size)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None  # the batch of the next step, loading

    def load(self, step: int):
        idx = batch_indices(self.seed, *divmod(step, self.steps_per_epoch), len(self.source), self.batch)
        x, y = self.source.get(idx[self.local])
        return idx, np.asarray(x, np.float32), np.asarray(y, np.float32)

    def get(self, step: int):
        """``(indices, x, y, seconds waited for the data)`` of ``step``."""
        t_wait = time.perf_counter()
        idx, x, y = (self.pending or self.pool.submit(self.load, step)).result()
        waited = time.perf_counter() - t_wait
        following = step + 1
        self.pending = (self.pool.submit(self.load, following)
                        if following < self.last_step and following % self.steps_per_epoch else None)
        x, y = distributed.global_batch(self.sharding, (x, y), self.batch)
        return idx, x, y, waited

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _progress_bar(s: Setup, step: int):
    from tqdm.auto import tqdm

    return tqdm(total=s.last_step, initial=min(step, s.last_step), desc="train", unit="step",
                disable=not (s.config.progress and s.primary), dynamic_ncols=True)


def _show(bar, s: Setup, step: int, loss: float, clock: _EpochClock) -> None:
    epochs = s.config.epochs
    bar.update(1)
    bar.set_postfix(epoch=f"{min(step // s.steps_per_epoch + 1, epochs)}/{epochs}", loss=f"{loss:.4g}",
                    samples_s=f"{clock.samples / clock.seconds():.1f}")


def _save(s: Setup, state: TrainState, extra: dict, step: int, status: str, **report) -> None:
    """Checkpoint ``state`` at ``step`` and record ``status`` (with ``report``). A state
    with a non-finite value is never saved: the guard of each step sees the loss and the
    gradients, not the parameters that the step's update made (a setting that passed its
    checks, a library fault), and a checkpoint is a state to continue from."""
    if not all_finite((state.params, state.opt_state)):
        last = s.checkpointer.latest_step()
        raise SettingError(
            f"non-finite parameters or optimiser state after step {step}; nothing was saved at step {step}: "
            + (f"a rerun resumes from the checkpoint of step {last}" if last is not None
               else "the run has no checkpoint, a rerun starts again")
            + ". Check the data and the settings, lower {learning_rate} or set {grad_clip_norm}")
    try:
        s.checkpointer.save(state, extra)
    except SymgradError as exc:  # the disk filled up, or the directory became unwritable
        last = s.checkpointer.latest_step()
        then = (f"rerun the same command to resume from step {last}" if last is not None
                else "rerun the same command to start again")
        raise SymgradError(f"{exc}; no checkpoint was written at step {step}: {then}") from None
    if s.primary:
        run.write_status(s.run_dir, status, step=step, **report)


def _end_epoch(s: Setup, params, extra: dict, step: int, clock: _EpochClock, log) -> None:
    """The epoch that ``step`` completes: evaluate, record, report."""
    seconds = clock.seconds()  # training only, not the evaluation
    values = {key: evaluator.evaluate(params) for key, evaluator in s.evaluators.items()}
    train_smse = extra["epoch_loss_sum"] / max(1, extra["epoch_loss_count"])
    s.metrics.epoch({
        "epoch": step // s.steps_per_epoch - 1, "step": step, "train_smse": train_smse, **values,
        "epoch_seconds": seconds, "samples_per_second": clock.samples / seconds if seconds > 0 else float("nan"),
    })
    val, rollout = values["val_smse"], values["val_rollout_smse"]
    roll = (f", rollout SMSE {rollout[0]:.4g} (1 step) .. {rollout[-1]:.4g} ({len(rollout)} steps)"
            if rollout else "")
    if "relaxation_spread" in values:
        roll += f", coefficient spread {values['relaxation_spread']:.3g} (penalty {values['relaxation_penalty']:.3g})"
    if s.primary:
        log(f"epoch {step // s.steps_per_epoch}/{s.config.epochs}: train SMSE {train_smse:.4g}, "
            f"val SMSE {val:.4g} (persistence {s.baseline[0]:.4g}){roll}, step {step}")


def _fail_non_finite(s: Setup, state: TrainState, extra: dict, step: int, idx: np.ndarray, metrics) -> None:
    """Checkpoint the last good ``state`` (at ``step``), report the step that failed in
    ``status.json``, and raise."""
    epoch, position = divmod(step, s.steps_per_epoch)
    report = {"failed_step": step + 1, "failed_epoch": epoch + 1, "failed_batch": position,
              "transition_indices": idx.tolist(), "loss": float(distributed.fetch(metrics["loss"])),
              "grad_norm": float(distributed.fetch(metrics["grad_norm"]))}
    _save(s, state, extra, step, "non-finite", **report)  # refused if the update before made state non-finite
    raise SettingError(
        f"non-finite loss or gradient at step {step + 1} (epoch {epoch + 1}, batch {position} of the "
        f"epoch, transitions {idx[:8].tolist()}{'...' if len(idx) > 8 else ''}; loss={report['loss']}, "
        f"grad_norm={report['grad_norm']}); the last good state (step {step}) is checkpointed in "
        f"{s.checkpointer.directory}. Check the data, lower {{learning_rate}} or set {{grad_clip_norm}}, then "
        "rerun to resume (status.json has details)")
