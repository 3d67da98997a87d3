"""Sweeps: expand a study definition (TOML) into jobs, run them locally or on SLURM.

A sweep is a grid of training runs (model x preset x seed) followed, for each run, by
diagnostics (equivariance / overlap) per group. Jobs are plain ``symgrad`` command lines;
each one's output path is known in advance, so a re-run skips what is already finished
(every symgrad output is written atomically, so "exists" means "complete").
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from symgrad.errors import EXIT_PREEMPTED, SymgradError

_DIAGNOSTICS = ("equivariance", "overlap")


@dataclass(frozen=True)
class Job:
    name: str
    argv: tuple[str, ...]  # arguments after "symgrad"
    output: str  # file or directory whose existence marks the job as done
    depends_on: tuple[str, ...] = ()
    kind: str = "train"

    def command(self, executable: str = "symgrad") -> str:
        return " ".join(shlex.quote(a) for a in (executable, *self.argv))


@dataclass(frozen=True)
class Sweep:
    name: str
    out: Path
    data: tuple[str, ...]
    models: tuple[str, ...]
    presets: tuple[str, ...]
    seeds: tuple[int, ...]
    groups: tuple[str, ...]
    diagnostics: tuple[str, ...]
    train_args: dict = field(default_factory=dict)
    equivariance_args: dict = field(default_factory=dict)
    overlap_args: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)


def _as_tuple(table: dict, key: str, path: Path, default=None) -> tuple:
    if key not in table:
        if default is None:
            raise SymgradError(f"sweep file {path} lacks the key '{key}' in [sweep]; add it (see experiments/sweeps/paper.toml)")
        return tuple(default)
    value = table[key]
    return tuple(value) if isinstance(value, list) else (value,)


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SymgradError(f"sweep file {path} does not exist; see experiments/sweeps/ for examples") from None
    except tomllib.TOMLDecodeError as exc:
        raise SymgradError(f"sweep file {path} is not valid TOML: {exc}") from None
    table = raw.get("sweep")
    if not isinstance(table, dict):
        raise SymgradError(f"sweep file {path} has no [sweep] table; see experiments/sweeps/paper.toml")
    diagnostics = _as_tuple(table, "diagnostics", path, _DIAGNOSTICS)
    unknown = set(diagnostics) - set(_DIAGNOSTICS)
    if unknown:
        raise SymgradError(f"sweep file {path}: unknown diagnostics {sorted(unknown)}; choose from {list(_DIAGNOSTICS)}")
    out = Path(table.get("out", f"out/sweeps/{table.get('name', path.stem)}"))
    return Sweep(
        name=str(table.get("name", path.stem)),
        out=out,
        data=_as_tuple(table, "data", path),
        models=_as_tuple(table, "models", path),
        presets=_as_tuple(table, "presets", path, ("tiny",)),
        seeds=tuple(int(s) for s in _as_tuple(table, "seeds", path, (0,))),
        groups=_as_tuple(table, "groups", path, ("d4",)),
        diagnostics=diagnostics,
        train_args=dict(raw.get("train", {})),
        equivariance_args=dict(raw.get("equivariance", {})),
        overlap_args=dict(raw.get("overlap", {})),
        slurm=dict(raw.get("slurm", {})),
    )


def _flags(options: dict) -> list[str]:
    """``{"batch_size": 64, "resume": true}`` -> ``["--batch-size", "64", "--resume"]``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def expand(sweep: Sweep) -> list[Job]:
    """All jobs of a sweep, each training run before the diagnostics that read it."""
    jobs: list[Job] = []
    for model, preset, seed in itertools.product(sweep.models, sweep.presets, sweep.seeds):
        run_name = f"{model}-{preset}-seed{seed}"
        run_dir = sweep.out / "runs" / run_name
        train = Job(
            name=f"train-{run_name}",
            argv=("train", "--model", model, "--preset", preset, "--data", *sweep.data,
                  "--out", str(run_dir), "--seed", str(seed), *_flags(sweep.train_args)),
            output=str(run_dir / "DONE"),
            kind="train",
        )
        jobs.append(train)
        for diagnostic, group in itertools.product(sweep.diagnostics, sweep.groups):
            result = sweep.out / "results" / f"{run_name}-{diagnostic}-{group}.nc"
            extra = sweep.equivariance_args if diagnostic == "equivariance" else sweep.overlap_args
            jobs.append(Job(
                name=f"{diagnostic}-{group}-{run_name}",
                argv=(diagnostic, "--run", str(run_dir), "--group", group, "--data", sweep.data[-1],
                      "--out", str(result), *_flags(extra)),
                output=str(result),
                depends_on=(train.name,),
                kind=diagnostic,
            ))
    return jobs


def run_local(jobs: list[Job], *, executable: list[str] | None = None, echo=print) -> int:
    """Run jobs one after another; skip finished ones; stop at the first failure."""
    executable = executable or [sys.executable, "-m", "symgrad"]
    failed: set[str] = set()
    for i, job in enumerate(jobs, 1):
        if Path(job.output).exists():
            echo(f"[{i}/{len(jobs)}] {job.name}: done already ({job.output})")
            continue
        if failed.intersection(job.depends_on):
            echo(f"[{i}/{len(jobs)}] {job.name}: skipped, a job it needs failed")
            continue
        echo(f"[{i}/{len(jobs)}] {job.name}: {job.command()}")
        rc = subprocess.call([*executable, *job.argv])
        if rc == EXIT_PREEMPTED:
            echo(f"[{i}/{len(jobs)}] {job.name}: pre-empted; its progress is saved, rerun the sweep to continue")
            failed.add(job.name)
        elif rc != 0:
            echo(f"[{i}/{len(jobs)}] {job.name}: failed with exit status {rc}")
            failed.add(job.name)
        elif job.kind == "train":
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            Path(job.output).touch()
    return 1 if failed else 0


_SLURM_DEFAULTS = {"partition": "gpu", "nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8,
                   "time": "24:00:00", "setup": "source .venv/bin/activate"}


def slurm_script(job: Job, slurm: dict, log_dir: Path) -> str:
    """An sbatch script for one job. Training runs one process per GPU over all nodes
    (``srun``): symgrad's training calls ``jax.distributed.initialize`` from the SLURM
    environment, so every process feeds its own shard of the global batch."""
    s = {**_SLURM_DEFAULTS, **slurm}
    nodes = int(s["nodes"]) if job.kind == "train" else 1
    gpus = int(s["gpus_per_node"]) if job.kind == "train" else 1
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={job.name}",
        f"#SBATCH --partition={s['partition']}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus}",
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --cpus-per-task={s['cpus_per_task']}",
        f"#SBATCH --time={s['time']}",
        f"#SBATCH --output={log_dir / (job.name + '-%j.log')}",
        # Pre-emption: SLURM sends SIGTERM first; symgrad train checkpoints on it.
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
    ]
    if s.get("account"):
        lines.append(f"#SBATCH --account={s['account']}")
    lines += ["set -euo pipefail", str(s["setup"])]
    if job.kind == "train":
        # A pre-empted run (exit EXIT_PREEMPTED) has saved a checkpoint: requeue the job, which
        # then resumes it. Only a complete run (exit 0) is marked done.
        lines += [
            "rc=0",
            f"srun {job.command()} || rc=$?",
            f'if [ "$rc" -eq {EXIT_PREEMPTED} ]; then scontrol requeue "$SLURM_JOB_ID"; exit 0; fi',
            f'if [ "$rc" -eq 0 ]; then touch {shlex.quote(job.output)}; fi',
            'exit "$rc"',
        ]
    else:
        lines.append(job.command())
    return "\n".join(lines) + "\n"


def write_slurm(jobs: list[Job], sweep: Sweep, directory: str | Path) -> Path:
    """One sbatch script per job plus ``submit.sh`` that submits them with dependencies."""
    directory = Path(directory)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    submit = ["#!/usr/bin/env bash", "# Submits the sweep; finished jobs are skipped.", "set -euo pipefail",
              'cd "$(dirname "$0")"', "declare -A JOB"]
    for job in jobs:
        script = directory / f"{job.name}.sbatch"
        script.write_text(slurm_script(job, sweep.slurm, directory / "logs"))
        deps = " ".join(f'${{JOB[{d}]:-}}' for d in job.depends_on)
        submit += [
            f"if [ -e {shlex.quote(job.output)} ]; then echo 'done: {job.name}'; else",
            f"  dep=$(echo {deps} | tr ' ' ':')",
            f'  JOB[{job.name}]=$(sbatch --parsable ${{dep:+--dependency=afterok:$dep}} {script.name})',
            f'  echo "submitted {job.name}: ${{JOB[{job.name}]}}"',
            "fi",
        ]
    path = directory / "submit.sh"
    path.write_text("\n".join(submit) + "\n")
    path.chmod(0o755)
    return path
