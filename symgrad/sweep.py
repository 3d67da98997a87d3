"""Sweeps: expand a study definition (TOML) into jobs, run them locally or on SLURM.

A sweep is optionally the generation of its data (``[generate]``: ``symgrad generate``),
then a grid of training runs (model x preset x seed) followed, for each run, by
diagnostics (equivariance / overlap) per group, then one merged dataset per diagnostic and
group (``symgrad merge``), then the report (``symgrad report``: figures, tables and
provenance) of those and of the runs' training curves. Jobs are plain ``symgrad`` command
lines; each one's output path is known in advance, so a re-run skips what is already
finished (every symgrad output is written atomically, so "exists" means "complete"; a
training run or a report, whose output is a directory, is finished when its ``DONE`` file
exists). That is the only notion of done: ``make demo`` is such a sweep too
(``experiments/sweeps/demo.toml``).

Options of one model or one group go in a sub-table named after it, e.g. ``[train.vit]``
or ``[overlap.translate-x]``; they override the table's own options for that model's or
group's jobs.

Every diagnostic reads all the sweep's ``data`` (the files its run was trained on): a
run's test split is drawn over those files' trajectories, so the test trajectories exist
only in them. String options may name the run's ``{model}``, ``{preset}`` and ``{seed}``,
e.g. ``[train] config = "experiments/paper-{model}.toml"``; ``data`` and
``compilation_cache`` may name the sweep's ``{out}``.

Relative paths of a sweep file (``out``, ``data``, ``compilation_cache``, ``[train] config``) are resolved once,
against the directory ``symgrad sweep`` runs in, so that the commands and the SLURM scripts hold absolute paths
and work from any directory.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import traceback
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
    train_args: dict = field(default_factory=dict)  # sub-tables: options of one model
    equivariance_args: dict = field(default_factory=dict)  # sub-tables: of one model or one group
    overlap_args: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    generate_args: dict | None = None  # flags of `symgrad generate`, which writes data[0]; None: no such job
    report_args: dict = field(default_factory=dict)  # flags of `symgrad report` (e.g. format)
    compilation_cache: str | None = None  # JAX's persistent compilation cache of every job


def _as_tuple(table: dict, key: str, path: Path, default=None, kind=str) -> tuple:
    """``[sweep] key`` as a tuple of ``kind`` (one value or a list of them)."""
    if key not in table:
        if default is None:
            raise SymgradError(f"sweep file {path} lacks the key '{key}' in [sweep]; add it (see experiments/sweeps/paper.toml)")
        return tuple(default)
    value = table[key]
    values = tuple(value) if isinstance(value, list) else (value,)
    what = {str: "a string", int: "an integer"}[kind]
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise SymgradError(f"sweep file {path}: [sweep] {key} must be {what} or a list of them, got {value!r}; "
                               "see experiments/sweeps/paper.toml")
    return values


# What a sweep file may hold: its tables, and the keys of [sweep] and [slurm]. The options of
# [generate], [train], [equivariance], [overlap] and [report] are the commands' own flags, checked by
# ``validate`` with the commands' parsers and configs.
_TABLES = ("sweep", "generate", "train", "equivariance", "overlap", "report", "slurm")
_SWEEP_KEYS = ("name", "out", "data", "models", "presets", "seeds", "groups", "diagnostics", "compilation_cache")


def _unknown(path: Path, what: str, given, known) -> None:
    """Refuse the names in ``given`` that are not ``known``, with the nearest known one."""
    import difflib

    for name in given:
        if name not in known:
            near = difflib.get_close_matches(str(name), list(known), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise SymgradError(f"sweep file {path}: unknown {what} '{name}'; {hint}known: {', '.join(known)}")


def load_sweep(path: str | Path, out: str | Path | None = None) -> Sweep:
    """The sweep defined by the file ``path``; ``out`` replaces its ``[sweep] out``."""
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
    _unknown(path, "table", raw, _TABLES)
    _unknown(path, "key of [sweep]", table, _SWEEP_KEYS)
    for section in ("generate", "train", "equivariance", "overlap", "report", "slurm"):
        if section in raw and not isinstance(raw[section], dict):
            raise SymgradError(f"sweep file {path}: '{section}' must be a table ([{section}]) of options")
    _unknown(path, "key of [slurm]", raw.get("slurm", {}), (*_SLURM_DEFAULTS, "account"))
    diagnostics = _as_tuple(table, "diagnostics", path, _DIAGNOSTICS)
    unknown = set(diagnostics) - set(_DIAGNOSTICS)
    if unknown:
        raise SymgradError(f"sweep file {path}: unknown diagnostics {sorted(unknown)}; choose from {list(_DIAGNOSTICS)}")
    name = table.get("name", path.stem)
    if not isinstance(name, str):
        raise SymgradError(f"sweep file {path}: [sweep] name must be a string, got {name!r}")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SymgradError(f"sweep file {path}: name {name!r} may hold only letters, digits, '.', '_' and '-' "
                           "(it names the SLURM jobs)")
    for key in ("out", "compilation_cache"):
        if key in table and not isinstance(table[key], str):
            raise SymgradError(f"sweep file {path}: [sweep] {key} must be a path (a string), got {table[key]!r}")
    out = Path(out if out is not None else table.get("out", f"out/sweeps/{name}")).absolute()

    def resolve(text) -> str:  # "{out}" is the sweep's output directory
        return str(Path(str(text).replace("{out}", str(out))).absolute())

    data = tuple(resolve(d) for d in _as_tuple(table, "data", path))
    models = _as_tuple(table, "models", path)
    groups = _as_tuple(table, "groups", path, ("d4",))
    generate = raw.get("generate")
    if generate is not None:
        if not isinstance(generate, dict) or any(isinstance(v, dict) for v in generate.values()):
            raise SymgradError(f"sweep file {path}: [generate] holds the options of 'symgrad generate' "
                               "and no sub-tables")
        if "out" in generate or len(data) != 1:
            raise SymgradError(f"sweep file {path}: [generate] writes the sweep's data, so [sweep] data must name "
                               "exactly one file and [generate] has no 'out'")
    options = {}
    for section, allowed in (("train", models), ("equivariance", models + groups), ("overlap", models + groups)):
        options[section] = dict(raw.get(section, {}))
        for key, value in options[section].items():
            if isinstance(value, dict) and key not in allowed:
                what = "a model" if section == "train" else "a model or a group"
                raise SymgradError(f"sweep file {path}: [{section}.{key}] does not name {what} of this sweep "
                                   f"({', '.join(allowed)}); options of one {what.removeprefix('a ')} go in "
                                   f"[{section}.<name>]")
    report = dict(raw.get("report", {}))
    if any(isinstance(v, dict) for v in report.values()) or {"out", "runs"} & set(report):
        raise SymgradError(f"sweep file {path}: [report] holds options of 'symgrad report' (like format), "
                           "no sub-tables, and not 'out' or 'runs' (the sweep sets them)")
    cache = table.get("compilation_cache")
    return Sweep(
        name=name,
        out=out,
        data=data,
        models=models,
        presets=_as_tuple(table, "presets", path, ("tiny",)),
        seeds=_as_tuple(table, "seeds", path, (0,), kind=int),
        groups=groups,
        diagnostics=diagnostics,
        train_args=_with_absolute_config(options["train"]),
        equivariance_args=options["equivariance"],
        overlap_args=options["overlap"],
        slurm=dict(raw.get("slurm", {})),
        generate_args=None if generate is None else dict(generate),
        report_args=report,
        compilation_cache=None if cache is None else resolve(cache),
    )


def validate(sweep: Sweep, jobs: list[Job], path: str | Path) -> None:
    """Check every job of the sweep as its command will, before any runs: its options
    parsed by the command's own parser (an unknown option, a bad value, an unknown model,
    preset or group), and the settings of ``train``, ``equivariance`` and ``overlap``
    checked by their configs. The first problem is a one-line ``SymgradError`` naming the
    job; nothing is read but the training ``config`` files the options name."""
    from symgrad.cli import _UsageError, build_parser
    from symgrad.errors import SettingError

    parser = build_parser()
    for job in jobs:
        def refuse(message: str, job=job):
            raise SymgradError(f"sweep file {path}: job {job.name} would fail: {message}; fix the sweep file "
                               f"(its [{job.kind}] options become the flags of 'symgrad {job.argv[0]}')")

        try:
            args = parser.parse_args(list(job.argv))
        except _UsageError as exc:
            refuse(str(exc).split(": error: ", 1)[-1].split("; see '")[0])
        except SystemExit:  # --help or --version as an option
            refuse("an option that prints instead of running")
        try:
            _check_settings(job, args)
        except SettingError as exc:
            refuse(exc.message(lambda name: "--" + name.replace("_", "-")))
        except SymgradError as exc:
            refuse(str(exc))


def _check_settings(job: Job, args) -> None:
    """The settings of one parsed job, checked by the config of its command."""
    if job.kind == "train":
        from symgrad.commands.train import config_from_args

        config_from_args(args)
    elif job.kind in _DIAGNOSTICS:
        from symgrad.commands._settings import settings_from_args
        from symgrad.diagnostics.config import EquivarianceConfig, OverlapConfig

        settings_from_args(EquivarianceConfig if job.kind == "equivariance" else OverlapConfig, args)
    elif job.kind == "generate":
        from symgrad.data.generate import _MAX_SEED

        if not 0 <= args.seed <= _MAX_SEED:
            raise SymgradError(f"seed must be an integer in 0..{_MAX_SEED}, got {args.seed}")
        for name in ("trajectories", "times", "chunk_size"):
            if getattr(args, name) < 1:
                raise SymgradError(f"{name} must be >= 1, got {getattr(args, name)}")


def _with_absolute_config(options: dict) -> dict:
    for table in (options, *(v for v in options.values() if isinstance(v, dict))):
        if isinstance(table.get("config"), str):
            table["config"] = str(Path(table["config"]).absolute())
    return options


def _for_job(options: dict, *names: str) -> dict:
    """The table's own options, overridden by those of its sub-tables ``names`` (the job's
    model, then its group)."""
    merged = {key: value for key, value in options.items() if not isinstance(value, dict)}
    for name in names:
        merged.update(options.get(name, {}))
    return merged


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
    """All jobs of a sweep: the data's generation (if any) first, each training run before
    the diagnostics that read it."""
    jobs: list[Job] = []
    run_dirs = []
    needs_data: tuple[str, ...] = ()
    if sweep.generate_args is not None:
        jobs.append(Job(name="generate", argv=("generate", *_flags(sweep.generate_args), "--out", sweep.data[0]),
                        output=sweep.data[0], kind="generate"))
        needs_data = ("generate",)
    for model, preset, seed in itertools.product(sweep.models, sweep.presets, sweep.seeds):
        run_name = f"{model}-{preset}-seed{seed}"
        run_dir = sweep.out / "runs" / run_name
        run_dirs.append(str(run_dir))
        fill = dict(model=model, preset=preset, seed=seed)
        train = Job(
            name=f"train-{run_name}",
            argv=("train", "--model", model, "--preset", preset, "--data", *sweep.data,
                  "--out", str(run_dir), "--seed", str(seed),
                  *_flags(_filled(_for_job(sweep.train_args, model), **fill))),
            output=str(run_dir / "DONE"),
            depends_on=needs_data,
            kind="train",
        )
        jobs.append(train)
        for diagnostic, group in itertools.product(sweep.diagnostics, sweep.groups):
            result = sweep.out / "results" / f"{run_name}-{diagnostic}-{group}.nc"
            extra = sweep.equivariance_args if diagnostic == "equivariance" else sweep.overlap_args
            jobs.append(Job(
                name=f"{diagnostic}-{group}-{run_name}",
                argv=(diagnostic, "--run", str(run_dir), "--group", group, "--data", *sweep.data,
                      "--out", str(result), *_flags(_filled(_for_job(extra, model, group), **fill))),
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
        argv=("report", *(j.output for j in merges), "--runs", *run_dirs, "--out", str(report),
              *_flags(sweep.report_args)),
        output=str(report / "DONE"), depends_on=tuple(j.name for j in merges), kind="report",
    ))
    return jobs


# Jobs whose output is a directory: a DONE file in it marks the job finished.
_MARKED_DONE = ("train", "report")


def _echo(message: str) -> None:
    print(message, flush=True)  # before the job's own output


def _call_in_process(argv) -> int:
    from symgrad import cli

    try:
        return cli.main(list(argv))
    except SystemExit as exc:  # argparse's --help, or a command that exits
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:  # a bug in one job: report it, carry on with the jobs that do not need it
        traceback.print_exc()
        return 1
    finally:
        release_compiled_programs()


def release_compiled_programs() -> None:
    """Drop JAX's in-memory caches of compiled programs (the persistent cache on disk stays).

    Each compiled CPU program keeps about 30 memory mappings of its machine code while it is
    cached, and a process may hold at most ``vm.max_map_count`` (65,530 by default) mappings:
    a sweep of tens of jobs in one process (the demo) reached it, and LLVM then failed with
    "Cannot allocate memory" or crashed. A job's programs are not reused by the next job
    except through the persistent cache, so they are released after each job."""
    if "jax" in sys.modules:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


def run_local(jobs: list[Job], *, executable: list[str] | None = None, in_process: bool = False,
              echo=_echo) -> int:
    """Run jobs one after another; skip finished ones; a failed job skips the jobs that need
    it; exit status 1 at the end if any failed.

    Each job runs as ``executable ARGV`` (default ``python -m symgrad``), or, with
    ``in_process``, as ``symgrad.cli.main(ARGV)`` in this process: one JAX start-up for all
    jobs, which pays for small sweeps such as the demo."""
    executable = executable or [sys.executable, "-m", "symgrad"]
    failed: set[str] = set()
    start = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {job.name}"
        if Path(job.output).exists():
            echo(f"{head}: done already ({job.output})")
            continue
        if failed.intersection(job.depends_on):
            echo(f"{head}: skipped, a job it needs failed")
            failed.add(job.name)  # and so are the jobs that need this one
            continue
        echo(f"\n=== {head}  ({time.perf_counter() - start:.0f} s so far)\n$ {job.command()}")
        t0 = time.perf_counter()
        rc = _call_in_process(job.argv) if in_process else subprocess.call([*executable, *job.argv])
        if rc == 130:  # interrupted (Ctrl-C): stop the sweep, not just this job
            raise KeyboardInterrupt
        if rc == EXIT_PREEMPTED:
            echo(f"{head}: pre-empted; its progress is saved, rerun the sweep to continue")
            failed.add(job.name)
        elif rc != 0:
            echo(f"{head}: failed with exit status {rc}")
            failed.add(job.name)
        else:
            if job.kind in _MARKED_DONE:
                Path(job.output).parent.mkdir(parents=True, exist_ok=True)
                Path(job.output).touch()
            echo(f"({time.perf_counter() - t0:.1f} s)")
    echo(f"\n{len(jobs)} jobs, {len(failed)} failed or skipped, in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


def use_compilation_cache(directory: str | Path) -> None:
    """Keep JAX's compiled programs in ``directory`` for this process and the jobs it starts,
    unless ``JAX_COMPILATION_CACHE_DIR`` is set already. Call it before JAX compiles anything."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(directory))
    # Every program, however quick to compile: the in-process jobs release theirs
    # (release_compiled_programs), and a demo overlap job recompiled about 100 small ones,
    # 3 of its 28 s (0.4 MB more on disk).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "jax" in sys.modules:  # imported already: it has read the environment
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


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
    """Diagnostics of one kind that need the same training run become one array (each kind
    asks for its own GPUs); the rest stay single."""
    by_train: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.kind in _DIAGNOSTICS:
            by_train.setdefault((job.depends_on, job.kind), []).append(job)
    unit_of: dict[str, str] = {}
    units: list[_Unit] = []
    for job in jobs:
        if job.kind in _DIAGNOSTICS:
            members = by_train[(job.depends_on, job.kind)]
            if job is not members[0]:
                continue
            name = f"{job.kind}-" + job.depends_on[0].removeprefix("train-") if len(members) > 1 else job.name
        else:
            members, name = [job], job.name
        for member in members:
            unit_of[member.name] = name
        deps = tuple(dict.fromkeys(unit_of[d] for m in members for d in m.depends_on))
        units.append(_Unit(name, tuple(members), deps))
    return units


def slurm_script(unit: _Unit, slurm: dict, log_dir: Path, *, sweep_name: str, workdir: Path,
                 compilation_cache: str | None = None) -> str:
    """An sbatch script for one job or one job array. Training runs one process per GPU over
    all nodes (``srun``): symgrad's training calls ``jax.distributed.initialize`` from the
    SLURM environment, so every process feeds its own shard of the global batch. Paths are
    absolute and the job runs in ``workdir`` (``--chdir``), wherever it was submitted from."""
    s = {**_SLURM_DEFAULTS, **slurm}
    executable = s["executable"] or shlex.join([sys.executable, "-m", "symgrad"])
    is_train = unit.kind == "train"
    nodes = int(s["nodes"]) if is_train else 1
    # Training takes every GPU asked for (one process each); the overlap every GPU of its node
    # (one process, the curvature batch sharded over them); another diagnostic or the
    # generation one; merging and drawing none.
    gpus = {"train": int(s["gpus_per_node"]), "overlap": int(s["gpus_per_node"]),
            **{d: min(1, int(s["gpus_per_node"])) for d in (*_DIAGNOSTICS, "generate") if d != "overlap"}
            }.get(unit.kind, 0)
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
    if compilation_cache:
        lines.append(f'export JAX_COMPILATION_CACHE_DIR="${{JAX_COMPILATION_CACHE_DIR:-{compilation_cache}}}"')
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
            tmp.write_text(slurm_script(unit, sweep.slurm, log_dir, sweep_name=sweep.name, workdir=workdir,
                                        compilation_cache=sweep.compilation_cache))
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
