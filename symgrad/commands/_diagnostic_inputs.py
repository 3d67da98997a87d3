"""What ``symgrad equivariance`` and ``symgrad overlap`` share: loading a run, its data, and
choosing held-out samples, with the same checks and the same one-line errors."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

from symgrad.errors import SymgradError


from symgrad import names

GROUPS = names.GROUPS


def add_run_arguments(parser) -> None:
    """What every command that reads a trained run takes: the run, its checkpoint, the data,
    the test samples and the transition."""
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'symgrad train'")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--data", nargs="+", metavar="FILE.nc", default=None,
                        help="dataset file(s) (default: the run's data, whose test split is used)")
    parser.add_argument("--time", type=int, default=None, metavar="T",
                        help="use the transition T -> T+1 of each test trajectory " + names.DEFAULT_TIME_HELP)


def add_samples_argument(parser, default: int | None, use: str = "") -> None:
    parser.add_argument("--samples", type=int, default=default, metavar="N",
                        help=f"use the first N test trajectories{use}" + ("" if default else " (default: all)"))


def add_diagnostic_arguments(parser) -> None:
    """The arguments every diagnostic over a group takes: the run, the group, the output."""
    add_run_arguments(parser)
    parser.add_argument("--group", required=True, choices=GROUPS, help="symmetry group")
    parser.add_argument("--out", required=True, metavar="RESULT.nc",
                        help="output netCDF file; an existing one is kept unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace RESULT.nc if it exists")
    parser.add_argument("--stride", type=int, default=1, metavar="K",
                        help="translations: shifts 0, K, 2K, ... < resolution")
    parser.add_argument("--factors", type=float, nargs="+", default=names.DEFAULT_SCALE_FACTORS, metavar="A",
                        help="scaling factors")


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise SymgradError(f"{out} exists (a finished result); pass --overwrite to replace it, or choose another --out")


def check_output(path, overwrite: bool) -> Path:
    """Refuse to replace a finished result without ``--overwrite``, and fail *before* the long
    work when ``path`` cannot be written (a directory, a missing parent that cannot be made,
    a read-only or full file system)."""
    import os
    import tempfile

    out = Path(path)
    if out.is_dir():
        raise SymgradError(f"--out {out} is a directory; pass a file name such as {out / 'result.nc'}")
    _refuse_existing(out, overwrite)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes permission checks on read-only mounts.
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SymgradError(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None
    return out


@contextlib.contextmanager
def locked_output(path, overwrite: bool):
    """``check_output``, then hold ``.RESULT.nc.lock`` (one writer per result, partials
    included) until the result is written; the existence check is repeated once the lock is
    held, so that a run that finished meanwhile is not replaced."""
    from symgrad.io import ExclusiveLock

    out = check_output(path, overwrite)
    with ExclusiveLock(out.with_name(f".{out.name}.lock"), f"the output {out}"):
        _refuse_existing(out, overwrite)
        yield out


class DiagnosticInputs(NamedTuple):
    run: object  # symgrad.train.Run
    run_dir: Path
    data_paths: list[str]
    dataset: object  # symgrad.data.TrajectoryDataset


def resolved(paths) -> list[str]:
    return [str(Path(p).expanduser().resolve()) for p in paths]


def load_inputs(run_dir, data, step=None) -> DiagnosticInputs:
    """Load the run (latest checkpoint unless ``step``) and open its data or ``data``."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise SymgradError(f"--run {run_dir} is a file; pass the run directory (the --out of 'symgrad train')")
    if not run_dir.is_dir():
        raise SymgradError(f"run directory {run_dir} does not exist; pass the --out directory of 'symgrad train'")
    from symgrad.data import open_dataset
    from symgrad.train import load_run

    try:
        run = load_run(run_dir, step=step) if step is not None else load_run(run_dir)
    except SymgradError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SymgradError(
            f"cannot load a checkpoint from {run_dir} ({type(exc).__name__}: {first}); "
            "pass a run directory written by 'symgrad train' that holds a checkpoint"
        ) from None

    data_paths = list(data) if data else list(getattr(run, "data_paths", None) or [])
    if not data_paths:
        raise SymgradError("the run does not record its data files; pass --data FILE.nc")
    for p in data_paths:
        if not Path(p).exists():
            raise SymgradError(f"data file {p} does not exist; pass an existing netCDF file to --data")
    dataset = open_dataset(data_paths)

    model = getattr(run, "model", None)
    config = getattr(model, "config", None)
    model_resolution = config.get("resolution") if isinstance(config, dict) else None
    if model_resolution is not None and int(model_resolution) != int(dataset.resolution):
        raise SymgradError(
            f"the model was built for {model_resolution}x{model_resolution} states but {data_paths[0]} "
            f"holds {dataset.resolution}x{dataset.resolution}; pass data at the model's resolution"
        )
    return DiagnosticInputs(run, run_dir, data_paths, dataset)


def result_attrs(inputs: DiagnosticInputs, time_index: int, sample_source: str, **extra) -> dict:
    """The provenance of a diagnostic result: the run it measured (model, preset, seed, family:
    what ``symgrad merge`` stacks results by), its checkpoint, data and samples."""
    import numpy as np

    from symgrad.io import provenance

    run_, run_dir, data_paths, dataset = inputs
    model = getattr(run_, "model", None)
    return provenance(
        run_.config,
        run_dir=str(Path(run_dir).resolve()),
        checkpoint_step=int(run_.step) if run_.step is not None else -1,
        data_files=resolved(data_paths),
        time_index=int(time_index),
        sample_source=sample_source,
        model=getattr(model, "name", "unknown"),
        preset=getattr(model, "preset", "unknown"),
        seed=int(run_.config.get("seed", 0)),
        family=dataset.family,
        sigma=[float(s) for s in np.asarray(run_.sigma)],
        **extra,
    )


def add_precision_argument(parser) -> None:
    """``--precision``, the same for every diagnostic (``symgrad.diagnostics.precision``)."""
    parser.add_argument("--precision", choices=names.PRECISIONS, default="float64",
                        help="arithmetic of the model, its gradients and solves: parameters and data are cast "
                             "(float64 reaches rtol 1e-6 at small lambda)")


def chosen_transition(args, dataset, run_=None) -> int:
    """``--time``, or the default transition of the command's group and run (``names.default_transition``)."""
    if args.time is not None:
        return int(args.time)
    time_indices = run_.info.time_indices if run_ is not None else ()
    return names.default_transition(getattr(args, "group", None), dataset.n_times, time_indices)


def check_transition(time_index: int, dataset) -> None:
    if not 0 <= time_index <= dataset.n_times - 2:
        raise SymgradError(
            f"--time {time_index} is not a transition of data with {dataset.n_times} times; "
            f"choose 0..{dataset.n_times - 2}"
        )


def select_test_samples(inputs: DiagnosticInputs):
    """Trajectory indices in the dataset to evaluate, and a phrase saying where they come from.

    The run's test split indexes the concatenation of its training files. If the
    diagnostic reads those files, the split applies unchanged; if it reads one of them,
    the split is mapped into that file; a file the run never saw is held out entirely.
    Training trajectories are never evaluated.
    """
    import numpy as np

    from symgrad.data import open_dataset

    run, data_paths, dataset = inputs.run, inputs.data_paths, inputs.dataset
    run_paths = resolved(getattr(run, "data_paths", None) or [])
    split = getattr(run, "split", None) or {}
    test = np.asarray(split.get("test", []), dtype=np.int64)
    ours = resolved(data_paths)
    if set(ours) & set(run_paths) and test.size == 0:
        raise SymgradError(
            "the run has no test trajectories (its split fractions leave none); "
            "pass a held-out data file with --data"
        )
    if run_paths and ours == run_paths:
        return test, "test split of the run"
    if run_paths and len(ours) == 1 and ours[0] in run_paths:
        offset = 0
        for p in run_paths:
            n = open_dataset([p]).n_samples
            if p == ours[0]:
                local = test[(test >= offset) & (test < offset + n)] - offset
                if local.size == 0:
                    raise SymgradError(
                        f"none of the run's test trajectories lies in {data_paths[0]}; "
                        "pass all of the run's data files to --data (or omit --data)"
                    )
                return local, "test split of the run, restricted to this file"
            offset += n
    if set(ours) & set(run_paths):
        raise SymgradError(
            "--data mixes files the run was trained on with others; pass exactly the run's data files, "
            "one of them, or only held-out files"
        )
    return np.arange(dataset.n_samples), "all trajectories of a data file the run was not trained on"


def first_test_samples(inputs: DiagnosticInputs, n_samples: int | None):
    """The first ``n_samples`` held-out trajectories (all when None): ``(samples, source)``;
    asking for more than there are is an error, never a silent cap."""
    import numpy as np

    samples, source = select_test_samples(inputs)
    if n_samples is not None and len(samples) < n_samples:
        raise SymgradError(f"--samples {n_samples} but only {len(samples)} test trajectories are available; "
                           "pass a smaller --samples or more data")
    return np.asarray(samples if n_samples is None else samples[:n_samples]), source


def load_test_transitions(inputs: DiagnosticInputs, n_samples: int, time_index: int):
    """The first ``n_samples`` held-out transitions ``T -> T+1``: ``(samples, source, x, y)`` (numpy)."""
    import numpy as np

    check_transition(time_index, inputs.dataset)
    samples, source = first_test_samples(inputs, n_samples)
    states = np.asarray(inputs.dataset.states(samples, [time_index, time_index + 1]))
    return samples, source, states[:, 0], states[:, 1]
