"""Sweeps: expand a study definition (TOML) into jobs, run them locally or on SLURM.

A sweep is a grid of training runs (model x preset x seed) followed, for each run, by
diagnostics (equivariance / overlap) per group, then one merged dataset per diagnostic and
group (``symgrad merge``), then the report (``symgrad report``: figures, tables and
provenance) of those and of the runs' training curves. Jobs are plain ``symgrad`` command
lines; each one's output path is known in advance, so a re-run skips what is already
finished (every symgrad output is written atomically, so "exists" means "complete").

Every diagnostic reads all the sweep's ``data`` (the files its run was trained on): a
run's test split is drawn over those files' trajectories, so the test trajectories exist
only in them. String options may name the run's ``{model}``, ``{preset}`` and ``{seed}``,
e.g. ``[train] config = "experiments/paper-{model}.toml"``.

Relative paths of a sweep file (``out``, ``data``, ``[train] config``) are resolved once, against the directory
``symgrad sweep`` runs in, so that the commands and the SLURM scripts hold absolute paths
and work from any directory.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from symgrad.errors import EXIT_PREEMPTED, SymgradError
from symgrad.io import atomic_write

_DIAGNOSTICS = ("equivariance", "overlap")


@dataclass(frozen=True)
class Job:
    name: str
    argv: tuple[str, ...]  # arguments after "symgrad"
    output: str  # file or directory whose existence marks the job as done
    depends_on: tuple[str, ...] = ()
    kind: str = "train"

    def command(self, executable: str = "symgrad") -> str:
        """The shell command line; ``executable`` is shell text (``python -m symgrad``)."""
        return " ".join([executable, *(shlex.quote(a) for a in self.argv)])


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
    name = str(table.get("name", path.stem))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SymgradError(f"sweep file {path}: name {name!r} may hold only letters, digits, '.', '_' and '-' "
                           "(it names the SLURM jobs)")
    out = Path(table.get("out", f"out/sweeps/{name}")).absolute()
    return Sweep(
        name=name,
        out=out,
        data=tuple(str(Path(d).absolute()) for d in _as_tuple(table, "data", path)),
        models=_as_tuple(table, "models", path),
        presets=_as_tuple(table, "presets", path, ("tiny",)),
        seeds=tuple(int(s) for s in _as_tuple(table, "seeds", path, (0,))),
        groups=_as_tuple(table, "groups", path, ("d4",)),
        diagnostics=diagnostics,
        train_args=_with_absolute_config(dict(raw.get("train", {}))),
        equivariance_args=dict(raw.get("equivariance", {})),
        overlap_args=dict(raw.get("overlap", {})),
        slurm=dict(raw.get("slurm", {})),
    )


def _with_absolute_config(options: dict) -> dict:
    if isinstance(options.get("config"), str):
        options["config"] = str(Path(options["config"]).absolute())
    return options


def _filled(options: dict, **run) -> dict:
    """String options with the run's ``{model}``, ``{preset}`` and ``{seed}`` filled in."""
    def fill(value):
        if isinstance(value, str):
            try:
                return value.format(**run)
            except (KeyError, IndexError, ValueError):
                raise SymgradError(f"sweep option {value!r}: only {{model}}, {{preset}} and {{seed}} "
                                   "can be filled in; write other braces doubled") from None
        return [fill(v) for v in value] if isinstance(value, list) else value

    return {key: fill(value) for key, value in options.items()}


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
    run_dirs = []
    for model, preset, seed in itertools.product(sweep.models, sweep.presets, sweep.seeds):
        run_name = f"{model}-{preset}-seed{seed}"
        run_dir = sweep.out / "runs" / run_name
        run_dirs.append(str(run_dir))
        fill = dict(model=model, preset=preset, seed=seed)
        train = Job(
            name=f"train-{run_name}",
            argv=("train", "--model", model, "--preset", preset, "--data", *sweep.data,
                  "--out", str(run_dir), "--seed", str(seed), *_flags(_filled(sweep.train_args, **fill))),
            output=str(run_dir / "DONE"),
            kind="train",
        )
        jobs.append(train)
        for diagnostic, group in itertools.product(sweep.diagnostics, sweep.groups):
            result = sweep.out / "results" / f"{run_name}-{diagnostic}-{group}.nc"
            extra = sweep.equivariance_args if diagnostic == "equivariance" else sweep.overlap_args
            jobs.append(Job(
                name=f"{diagnostic}-{group}-{run_name}",
                argv=(diagnostic, "--run", str(run_dir), "--group", group, "--data", *sweep.data,
                      "--out", str(result), *_flags(_filled(extra, **fill))),
                output=str(result),
                depends_on=(train.name,),
                kind=diagnostic,
            ))
    study = sweep.out / "study"
    merges = []
    for diagnostic, group in itertools.product(sweep.diagnostics, sweep.groups):
        parts = [j for j in jobs if j.kind == diagnostic and j.argv[j.argv.index("--group") + 1] == group]
        merged = study / f"{diagnostic}-{group}.nc"
        merges.append(Job(
            name=f"merge-{diagnostic}-{group}",
            argv=("merge", *(j.output for j in parts), "--out", str(merged)),
            output=str(merged), depends_on=tuple(j.name for j in parts), kind="merge",
        ))
    jobs += merges
    if not merges:  # no diagnostics or no groups: nothing to merge or draw
        return jobs
    report = sweep.out / "report"
    jobs.append(Job(
        name="report",
        argv=("report", *(j.output for j in merges), "--runs", *run_dirs, "--out", str(report)),
        output=str(report / "DONE"), depends_on=tuple(j.name for j in merges), kind="report",
    ))
    return jobs


# Jobs whose output is a directory: a DONE file in it marks the job finished.
_MARKED_DONE = ("train", "report")


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
            failed.add(job.name)  # and so are the jobs that need this one
            continue
        echo(f"[{i}/{len(jobs)}] {job.name}: {job.command()}")
        rc = subprocess.call([*executable, *job.argv])
        if rc == EXIT_PREEMPTED:
            echo(f"[{i}/{len(jobs)}] {job.name}: pre-empted; its progress is saved, rerun the sweep to continue")
            failed.add(job.name)
        elif rc != 0:
            echo(f"[{i}/{len(jobs)}] {job.name}: failed with exit status {rc}")
            failed.add(job.name)
        elif job.kind in _MARKED_DONE:
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            Path(job.output).touch()
    return 1 if failed else 0


_SLURM_DEFAULTS = {"partition": "gpu", "nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8,
                   "time": "24:00:00", "setup": "", "executable": ""}


@dataclass(frozen=True)
class _Unit:
    """What one ``sbatch`` submits: one job, or a job array of similar jobs (the diagnostics
    of one training run), each array task running one of them."""

    name: str
    jobs: tuple[Job, ...]
    depends_on: tuple[str, ...]  # unit names

    @property
    def kind(self) -> str:
        return self.jobs[0].kind

    @property
    def is_array(self) -> bool:
        return len(self.jobs) > 1


def _units(jobs: list[Job]) -> list[_Unit]:
    """Diagnostics that need the same training run become one array; the rest stay single."""
    by_train: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        if job.kind in _DIAGNOSTICS:
            by_train.setdefault(job.depends_on, []).append(job)
    unit_of: dict[str, str] = {}
    units: list[_Unit] = []
    for job in jobs:
        if job.kind in _DIAGNOSTICS:
            members = by_train[job.depends_on]
            if job is not members[0]:
                continue
            name = "diagnostics-" + job.depends_on[0].removeprefix("train-") if len(members) > 1 else job.name
        else:
            members, name = [job], job.name
        for member in members:
            unit_of[member.name] = name
        deps = tuple(dict.fromkeys(unit_of[d] for m in members for d in m.depends_on))
        units.append(_Unit(name, tuple(members), deps))
    return units


def slurm_script(unit: _Unit, slurm: dict, log_dir: Path, *, sweep_name: str, workdir: Path) -> str:
    """An sbatch script for one job or one job array. Training runs one process per GPU over
    all nodes (``srun``): symgrad's training calls ``jax.distributed.initialize`` from the
    SLURM environment, so every process feeds its own shard of the global batch. Paths are
    absolute and the job runs in ``workdir`` (``--chdir``), wherever it was submitted from."""
    s = {**_SLURM_DEFAULTS, **slurm}
    executable = s["executable"] or shlex.join([sys.executable, "-m", "symgrad"])
    is_train = unit.kind == "train"
    nodes = int(s["nodes"]) if is_train else 1
    # Training takes every GPU asked for; a diagnostic one; merging and drawing none.
    gpus = {"train": int(s["gpus_per_node"]), **{d: min(1, int(s["gpus_per_node"])) for d in _DIAGNOSTICS}}.get(
        unit.kind, 0)
    tasks = max(1, gpus) if is_train else 1
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={sweep_name}-{unit.name}",
        f"#SBATCH --partition={s['partition']}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks}",
        f"#SBATCH --cpus-per-task={s['cpus_per_task']}",
        f"#SBATCH --time={s['time']}",
        f"#SBATCH --chdir={workdir}",
        f"#SBATCH --output={log_dir / (unit.name + ('-%A_%a.log' if unit.is_array else '-%j.log'))}",
        # A job whose dependency failed is cancelled, not left pending forever: a rerun of
        # submit.sh then submits it again behind the resubmitted dependency.
        "#SBATCH --kill-on-invalid-dep=yes",
        # Pre-emption: SLURM sends SIGTERM first; symgrad train checkpoints on it.
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
    ]
    if gpus:
        lines.insert(5, f"#SBATCH --gpus-per-node={gpus}")
    if s.get("account"):
        lines.append(f"#SBATCH --account={s['account']}")
    lines.append("set -euo pipefail")
    if s["setup"]:
        lines.append(str(s["setup"]))
    # A pre-empted command (exit EXIT_PREEMPTED: train has checkpointed, overlap kept its
    # finished chunks) requeues its job or array task, which then continues the work.
    lines += [
        "run() {",
        '  local rc=0; "$@" || rc=$?',
        f'  if [ "$rc" -eq {EXIT_PREEMPTED} ]; then',
        '    scontrol requeue "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"',
        "    exit 0",
        "  fi",
        '  return "$rc"',
        "}",
    ]
    # Every command runs as a job step (srun): `--signal=TERM@120` signals job steps, not the
    # batch shell, so only a step gets the early SIGTERM that lets it save and exit 75.
    launcher = "run srun" if is_train else "run srun --ntasks=1"
    if unit.is_array:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        lines += [f"  {i}) {launcher} {job.command(executable)} ;;" for i, job in enumerate(unit.jobs)]
        lines += ['  *) echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', "esac"]
    else:
        job = unit.jobs[0]
        lines.append(f"{launcher} {job.command(executable)}")
        if job.kind in _MARKED_DONE:  # only a complete run (exit 0) is marked done
            lines.append(f"touch {shlex.quote(job.output)}")
    return "\n".join(lines) + "\n"


def write_slurm(jobs: list[Job], sweep: Sweep, directory: str | Path) -> Path:
    """One sbatch script per job or job array, plus ``submit.sh``, which submits what is not
    finished and not already queued, with ``afterok`` dependencies. Rerunning it is safe."""
    directory = Path(directory).absolute()
    log_dir = directory / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path.cwd()
    submit = ["#!/usr/bin/env bash",
              f"# Submits the sweep {sweep.name}: skips finished jobs (their output exists) and",
              "# jobs already queued or running; the rest wait (afterok) for what they need.",
              "set -euo pipefail", "declare -A JOB"]
    for unit in _units(jobs):
        script = directory / f"{unit.name}.sbatch"
        with atomic_write(script) as tmp:  # a rerun after a crash never submits half a script
            tmp.write_text(slurm_script(unit, sweep.slurm, log_dir, sweep_name=sweep.name, workdir=workdir))
        slurm_name = f"{sweep.name}-{unit.name}"
        deps = " ".join(f'${{JOB[{d}]:-}}' for d in unit.depends_on)
        submit.append(f"# {unit.name}")
        submit.append('todo=""')
        submit += [f"[ -e {shlex.quote(job.output)} ] || todo=\"$todo,{i}\"" for i, job in enumerate(unit.jobs)]
        array = ' --array="${todo#,}"' if unit.is_array else ""
        # A failing squeue stops the script (set -e): guessing "not queued" would submit twice.
        submit.append(f"queued=$(squeue --me -h -n {slurm_name} -o %F | awk 'NR == 1')")  # awk reads all: no SIGPIPE
        submit += [
            f'if [ -z "$todo" ]; then echo "done: {unit.name}"',
            'elif [ -n "$queued" ]; then',
            f'  JOB[{unit.name}]=$queued; echo "queued already: {unit.name} ($queued)"',
            "else",
            f"  dep=$(echo {deps} | tr ' ' ':')",
            f'  JOB[{unit.name}]=$(sbatch --parsable ${{dep:+--dependency=afterok:$dep}}{array} '
            f'{shlex.quote(str(script))} | cut -d";" -f1)',
            f'  echo "submitted {unit.name}: ${{JOB[{unit.name}]}}"',
            "fi",
        ]
    path = directory / "submit.sh"
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(submit) + "\n")
        tmp.chmod(0o755)
    return path
