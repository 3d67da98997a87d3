"""Orbax checkpoints of a run: ``RUN_DIR/checkpoints/<step>/{state,extra}``, written
atomically (tmp dir + rename). The rest of the run directory is :mod:`symgrad.train.run`'s.

Checkpoints are written synchronously: a step directory that exists is complete, which
is what a pre-empted or killed run relies on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from symgrad.errors import SymgradError
from symgrad.io import file_digest, write_error, write_json_atomic
from symgrad.train.state import all_finite

CHECKPOINT_DIR = "checkpoints"
DIGEST_FILE = "sha256.json"  # in each step directory: the SHA-256 of its other files
# Room a checkpoint takes beyond its arrays (orbax metadata, sharding and manifest files):
# measured at ~60 kB for the tiny UNet; 1 MiB leaves a margin for larger trees.
_METADATA_BYTES = 1 << 20


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir).absolute() / CHECKPOINT_DIR


class Checkpointer:
    """Periodic/final orbax checkpoints of a :class:`TrainState` keeping the newest ``keep``."""

    def __init__(self, run_dir, keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_dir(run_dir)
        if read_only and not self.directory.is_dir():
            self.manager = None
            return
        if read_only:
            # Read-only managers log three absl warnings about options they ignore; a
            # diagnostic reading a run should not print them to every user.
            keep = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
        )
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:  # orbax warns unconditionally that a read-only directory is read-only
            absl_logger.setLevel(logging.ERROR)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "extra"))
        finally:
            absl_logger.setLevel(level)

    def steps(self) -> list[int]:
        if self.manager is None:
            return []
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, state, extra: dict) -> bool:
        """Save ``state`` at its step (no-op if that step is already saved).

        A save that cannot fit, or fails to write, is the one-line ``SymgradError`` of
        ``symgrad.io.write_error``, and leaves no partial step directory behind.
        """
        step = int(np.asarray(jax.device_get(
            state.step.addressable_data(0) if hasattr(state.step, "addressable_data") else state.step)))
        if step in self.steps():
            return False
        target = self.directory / str(step)
        # Checked first: orbax fails on a full disk from its writer threads, with pages of
        # tracebacks. The uncompressed size bounds what a step writes, plus its metadata.
        needed = sum(getattr(x, "nbytes", 8) for x in jax.tree.leaves(state)) + _METADATA_BYTES
        free = shutil.disk_usage(self.directory).free
        enough = free >= needed
        if jax.process_count() > 1:  # every process decides alike, or the others hang in the save
            from jax.experimental import multihost_utils

            enough = bool(np.all(multihost_utils.process_allgather(np.asarray(enough))))
        if not enough:
            raise write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), target,
                              needed=f"a checkpoint needs about {needed} bytes")
        # A failure below is reported in one line: silence what orbax's writer threads log
        # about it (absl errors, and asyncio's "Task exception was never retrieved").
        loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                extra=ocp.args.JsonSave(extra),
            ))
            self.manager.wait_until_finished()
        except Exception as exc:  # orbax/tensorstore raise ValueError, RuntimeError, OSError
            # The loggers stay silenced: training stops on this error, and orbax's failed
            # writer tasks are logged as late as interpreter exit.
            for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
            code = re.search(r"os_error_code='(\d+)'", str(exc))
            err = write_error(OSError(int(code.group(1)), os.strerror(int(code.group(1))))
                              if code else exc, target)
            if err is None:
                raise
            raise err from None
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if saved and jax.process_index() == 0:
            self._record_digests(target)
        return saved

    # A content check of each checkpoint, as symgrad generate has for its chunks: the
    # SHA-256 of every file of the step directory, written (atomically) after orbax
    # finished it, and compared before a restore. A checkpoint without it (killed between
    # the two, or written by an older symgrad) is restored unchecked; its values are
    # still checked to be finite.
    def _record_digests(self, step_dir: Path) -> None:
        try:
            write_json_atomic(step_dir / DIGEST_FILE, _digests(step_dir))
        except (SymgradError, OSError):  # a full disk: no checkpoint rather than an unverified one
            shutil.rmtree(step_dir, ignore_errors=True)
            raise

    def _verify(self, step: int, older: list[int]) -> None:
        step_dir = self.directory / str(step)
        manifest = step_dir / DIGEST_FILE
        if not manifest.exists():
            return
        try:
            expected = json.loads(manifest.read_text())
            if not isinstance(expected, dict):
                raise ValueError("not a table of digests")
        except (OSError, ValueError) as exc:
            raise SymgradError(f"checkpoint {step_dir} has an unreadable {DIGEST_FILE} ({exc}); "
                               f"{_fall_back(step_dir, older)}, or retrain from scratch with --overwrite") from None
        actual = _digests(step_dir)
        changed = sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
        if changed:
            raise SymgradError(
                f"checkpoint {step_dir} is damaged: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} "
                f"no longer match{'es' if len(changed) == 1 else ''} the SHA-256 written at save "
                f"({step_dir / DIGEST_FILE}); {_fall_back(step_dir, older)}, or retrain from scratch with --overwrite")

    def restore(self, abstract_state, step: int | None = None):
        """Restore ``(state, extra)``; a missing or unreadable checkpoint is a SymgradError."""
        steps = self.steps()
        if not steps:
            raise SymgradError(
                f"no checkpoint in {self.directory}; the run never saved one (or it was "
                "deleted). Retrain with 'symgrad train --out' into this directory using "
                "--overwrite, or into a new directory"
            )
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise SymgradError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
        older = [s for s in steps if s < step]
        self._verify(step, older)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                extra=ocp.args.JsonRestore(),
            ))
        except Exception as exc:  # orbax/tensorstore raise many types for damaged files
            raise SymgradError(
                f"checkpoint {self.directory / str(step)} is unreadable or does not match "
                f"this run's model/optimiser ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                f"{_fall_back(self.directory / str(step), older)}, or retrain from scratch with --overwrite"
            ) from exc
        state = restored["state"]
        if not all_finite((state.params, state.opt_state)):
            # Damaged bytes that no digest covers, or a state saved by an older symgrad's
            # NaN guard: never handed to training or to a diagnostic.
            raise SymgradError(
                f"checkpoint {self.directory / str(step)} holds non-finite parameters or optimiser state; "
                f"{_fall_back(self.directory / str(step), older)}, or retrain from scratch with --overwrite")
        return state, dict(restored["extra"])

    def close(self):
        if self.manager is not None:
            self.manager.close()


def _fall_back(step_dir: Path, older: list[int]) -> str:
    return (f"delete {step_dir} to fall back to step {older[-1]}" if older
            else "no older checkpoint exists")


def _digests(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file below ``step_dir`` (but the manifest), by relative path."""
    return {str(p.relative_to(step_dir)): file_digest(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name != DIGEST_FILE}
