"""A full disk, simulated with a small tmpfs: every writing command stops with one line and
leaves nothing corrupt (no result, no temporary file)."""

import os
import shutil
import subprocess
from pathlib import Path

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
