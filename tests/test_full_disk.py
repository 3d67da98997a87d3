"""A full disk, simulated with a small tmpfs: every writing command stops with one line and
leaves nothing corrupt (no result, no temporary file)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from symgrad.cli import main


@pytest.fixture()
def full_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("simulating a full disk needs a tmpfs mount, which needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): no full disk to simulate")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)  # fill it: the next write gets ENOSPC
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _leftovers(mount: Path):
    return sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*") if p.is_file() and p.name != "filler")


def test_every_writing_command_reports_a_full_disk_in_one_line(full_disk, tiny_trained_run, capsys):
    run_dir, data_file = tiny_trained_run
    commands = {
        "generate": ["--family", "CE-RP", "--trajectories", "2", "--resolution", "8", "--times", "2",
                     "--t-final", "0.01", "--out", str(full_disk / "g.nc"), "--no-progress"],
        "train": ["--model", "unet", "--preset", "tiny", "--data", str(data_file), "--epochs", "1",
                  "--batch-size", "4", "--out", str(full_disk / "run"), "--no-progress"],
        "equivariance": ["--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "1",
                         "--out", str(full_disk / "e.nc")],
        "overlap": ["--run", str(run_dir), "--group", "d4", "--metric", "euclidean", "--data", str(data_file),
                    "--samples", "1", "--out", str(full_disk / "o.nc"), "--no-progress"],
    }
    for name, args in commands.items():
        capsys.readouterr()
        assert main([name, *args]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"symgrad {name}: error: cannot write"), err
        assert "No space left on device" in err and str(full_disk) in err, err
    assert _leftovers(full_disk) == []


EPOCHS, STEPS_PER_EPOCH = 3, 8  # 6 training trajectories x 2 transitions / batch 2


def _train_args(data_file, out, checkpoint_every=1):
    return ["train", "--model", "unet", "--preset", "tiny", "--data", str(data_file), "--epochs", str(EPOCHS),
            "--batch-size", "2", "--checkpoint-every", str(checkpoint_every), "--keep", "1000",
            "--out", str(out), "--no-progress"]


def _remount(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def _fill_during_training(full_disk, data_file, capsys, checked_first: bool):
    """Train into a tmpfs with room for only a few checkpoints; check the failure it ends in."""
    from symgrad.train import Checkpointer

    (full_disk / "filler").unlink()
    _remount(full_disk, "2m")  # room for config, run.json and a few checkpoints of the tiny UNet
    run = full_disk / "run"
    capsys.readouterr()
    assert main(_train_args(data_file, run)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"symgrad train: error: cannot write {run}"), err
    assert "No space left on device" in err and "rerun the same command to resume from step" in err, err
    assert ("a checkpoint needs about" in err) == checked_first, err  # which of the two paths stopped it
    saved = Checkpointer(run, read_only=True).latest_step()
    assert saved is not None and 1 <= saved < EPOCHS * STEPS_PER_EPOCH
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["resume_step"] == saved  # not a stale "running"
    assert "No space left on device" in status["reason"]
    assert not list((run / "checkpoints").glob("*tmp*"))
    return run


def test_disk_filling_during_training_is_one_line_and_the_rerun_resumes(full_disk, tiny_trained_run, tmp_path,
                                                                        capsys):
    """The disk fills after a few checkpoints; the space a checkpoint needs is checked before
    each save: one line, status.json "failed"; with space freed, the same command resumes and
    ends bitwise equal to an uninterrupted run."""
    from symgrad.train import load_run

    _, data_file = tiny_trained_run
    run = _fill_during_training(full_disk, data_file, capsys, checked_first=True)
    _remount(full_disk, "64m")
    assert main(_train_args(data_file, run, checkpoint_every=1000)) == 0  # the cadence is free to change
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    reference = tmp_path / "reference"
    assert main(_train_args(data_file, reference, checkpoint_every=1000)) == 0
    a, b = load_run(reference), load_run(run)
    assert a.step == b.step == EPOCHS * STEPS_PER_EPOCH
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_checkpoint_write_that_orbax_cannot_finish_is_one_line(full_disk, tiny_trained_run, capsys,
                                                                 monkeypatch):
    """With the space check disabled, orbax's own write fails mid-checkpoint (another process
    filling the disk would do this): the same one line, and no partial step directory."""
    from symgrad.train import checkpoint

    monkeypatch.setattr(checkpoint, "_METADATA_BYTES", -(1 << 40))
    _fill_during_training(full_disk, tiny_trained_run[1], capsys, checked_first=False)
