"""A tiny sweep under a real SLURM (``make test-slurm`` starts one: tests/slurm/cluster.sh).

Submitted with ``symgrad sweep --slurm DIR --submit`` from a directory that is not the
project root; then the same sweep again with one training job killed mid-way
(``scancel --signal=KILL``) and resubmitted. The merged results of the two must be equal,
and the killed run must end bitwise equal to the uninterrupted one. Each training step is
slowed down by the test plug-in (tests/plugins/sitecustomize.py), which the jobs get through
the environment that sbatch passes on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slurm

SEEDS = (0, 1)
GROUPS = ("d4", "translate-x")
STEPS = 3 * 16  # 3 epochs x (16 training trajectories x 2 transitions / batch 2)

SWEEP = """
[sweep]
name = "{name}"
out = "out-{name}"
data = ["{data}"]
models = ["unet"]
presets = ["tiny"]
seeds = [0, 1]
groups = ["d4", "translate-x"]
diagnostics = ["equivariance"]

[train]
epochs = 3
batch_size = 2
checkpoint_every = 2
no_progress = true

[equivariance]
samples = 2

[slurm]
partition = "debug"
gpus_per_node = 0
cpus_per_task = 1
time = "00:30:00"
"""


def _slurm(*args) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def cluster():
    # `make test-slurm` has started a cluster and sets SYMGRAD_REQUIRE_SLURM: there a missing
    # SLURM is a failure, not a skip.
    give_up = pytest.fail if os.environ.get("SYMGRAD_REQUIRE_SLURM") else pytest.skip
    if shutil.which("sbatch") is None:
        give_up("no SLURM here: run 'make test-slurm', which starts one")
    try:
        _slurm("sinfo", "-h")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        give_up(f"SLURM does not answer ({exc}): run 'make test-slurm', which starts one")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory outside the project with the sweep's data."""
    from conftest import random_euler_states
    from symgrad import data

    root = tmp_path_factory.mktemp("slurm-sweep")
    data.write_dataset(root / "data.nc", random_euler_states(20, 3, 8, 0), np.linspace(0.0, 0.1, 3), gamma=1.4)
    return root


PLUGINS = Path(__file__).resolve().parent / "plugins"  # sitecustomize: faults for subprocesses
STEP_DELAY = "0.25"  # seconds after each training step: slow enough to be killed mid-way


def _env() -> dict[str, str]:
    """The environment of the submission, which sbatch passes on to every job (its default
    --export=ALL): the test plug-in slows each training step down."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), *filter(None, [env.get("PYTHONPATH")])])
    env["SYMGRAD_TEST_STEP_DELAY"] = STEP_DELAY
    return env


def _submit(workdir: Path, name: str) -> str:
    (workdir / f"{name}.toml").write_text(SWEEP.format(name=name, data=workdir / "data.nc"))
    proc = subprocess.run([sys.executable, "-m", "symgrad", "sweep", f"{name}.toml", "--slurm", f"slurm-{name}",
                           "--submit"], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _jobs(name: str) -> dict[str, str]:
    """Queued or running jobs of the sweep ``name``: SLURM job name -> job id."""
    out = _slurm("squeue", "--me", "-h", "-o", "%j %F")
    return dict(line.split() for line in out.splitlines() if line.startswith(f"{name}-"))


def _wait_until_idle(name: str, timeout: float = 900) -> None:
    t0 = time.time()
    while _jobs(name):
        assert time.time() - t0 < timeout, f"sweep {name} still has jobs: {_jobs(name)}"
        time.sleep(2)


def _run_dir(workdir, name, seed) -> Path:
    return workdir / f"out-{name}" / "runs" / f"unet-tiny-seed{seed}"


def _assert_complete(workdir: Path, name: str) -> None:
    out = workdir / f"out-{name}"
    logs = sorted((workdir / f"slurm-{name}" / "logs").glob("*.log"))
    tails = "\n".join(f"== {p.name}\n{p.read_text()[-600:]}" for p in logs)
    assert (out / "report" / "DONE").exists(), tails
    for group in GROUPS:
        with xr.open_dataset(out / "study" / f"equivariance-{group}.nc") as ds:
            assert ds.sizes["run"] == len(SEEDS) and sorted(ds["seed"].values.tolist()) == list(SEEDS)
            assert ds["group"].item() == group and ds["model"].values.tolist() == ["unet", "unet"]
    assert (out / "report" / "figures" / "fig1_d4.png").is_file() and (out / "report" / "report.html").is_file()


def _merged(workdir, name, group):
    with xr.open_dataset(workdir / f"out-{name}" / "study" / f"equivariance-{group}.nc") as ds:
        return ds.load()


def test_a_sweep_under_slurm_and_a_killed_training_job_resubmitted(cluster, workdir):
    from symgrad.train import load_run

    t0 = time.time()
    log = _submit(workdir, "clean")
    assert log.count("submitted ") == 2 + 2 + 2 + 1, log  # 2 trainings, 2 arrays, 2 merges, report
    _wait_until_idle("clean")
    _assert_complete(workdir, "clean")
    again = _submit(workdir, "clean")  # idempotent: nothing left to submit
    assert "submitted" not in again and again.count("done: ") == 7, again
    clean_seconds = time.time() - t0

    # Seed 0 is killed outright; seed 1 is pre-empted (SIGTERM to its job step): it saves,
    # exits 75, its job requeues itself and resumes without any resubmission.
    _submit(workdir, "killed")
    run, preempted = _run_dir(workdir, "killed", 0), _run_dir(workdir, "killed", 1)
    deadline = time.time() + 600
    while not all(any(p.name.isdigit() for p in (r / "checkpoints").glob("*")) for r in (run, preempted)):
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    jobs = _jobs("killed")
    _slurm("scancel", "--signal=KILL", jobs["killed-train-unet-tiny-seed0"])
    _slurm("scancel", "--signal=TERM", jobs["killed-train-unet-tiny-seed1"])
    deadline = time.time() + 120
    while '"preempted"' not in (preempted / "status.json").read_text():
        assert time.time() < deadline, (preempted / "status.json").read_text()
        time.sleep(0.2)
    assert load_run(preempted).step < STEPS
    _wait_until_idle("killed")  # seed 0's dependants are cancelled (--kill-on-invalid-dep)
    assert not (run / "DONE").exists() and not (workdir / "out-killed" / "report" / "DONE").exists()
    assert (preempted / "DONE").exists()  # requeued by its own script, resumed, finished
    assert json.loads((preempted / "status.json").read_text())["status"] == "finished"
    stopped = load_run(run).step
    assert 0 < stopped < STEPS

    resubmitted = _submit(workdir, "killed")
    assert "submitted train-unet-tiny-seed0" in resubmitted, resubmitted
    _wait_until_idle("killed")
    _assert_complete(workdir, "killed")
    logs = "".join(p.read_text() for p in (workdir / "slurm-killed" / "logs").glob("train-unet-tiny-seed0-*.log"))
    assert f"resuming {run} at step {stopped}" in logs, logs

    for seed in SEEDS:
        a, b = load_run(_run_dir(workdir, "clean", seed)), load_run(_run_dir(workdir, "killed", seed))
        assert a.step == b.step == STEPS
        for x, y in zip(_leaves(a.params), _leaves(b.params)):
            np.testing.assert_array_equal(x, y)
    for group in GROUPS:
        a, b = _merged(workdir, "clean", group), _merged(workdir, "killed", group)
        for var in ("equivariance_error", "orbit_error", "test_error", "equivariance_error_stats", "sample_id"):
            np.testing.assert_array_equal(a[var].values, b[var].values)
    print(f"clean sweep {clean_seconds:.0f} s; whole test {time.time() - t0:.0f} s")


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
