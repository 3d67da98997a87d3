"""``symgrad equivariance``: forward equivariance errors of a trained run over a group."""

from __future__ import annotations

import argparse
from pathlib import Path

from symgrad.errors import SymgradError

HELP = "measure forward equivariance errors of a trained surrogate over a symmetry group"
DESCRIPTION = (
    "For every element g of the group and every test transition (x, y), compute "
    "SMSE(f(g x), g f(x)) (equivariance error), SMSE(f(g x), g y) (orbit error) and "
    "SMSE(f(x), y) (test error), and write them with Tukey statistics and provenance "
    "to a netCDF file. Samples are the run's test trajectories. Defaults: D4 and scaling "
    "at the first transition (t = 0 -> 1), translations at the last transition of the data "
    "(t = n_times-2 -> n_times-1)."
)

GROUPS = ("d4", "translate-x", "translate-y", "scale")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'symgrad train'%(default).0s")
    parser.add_argument("--group", required=True, metavar="GROUP",
                        help=f"symmetry group: {', '.join(GROUPS)}%(default).0s")
    parser.add_argument("--data", nargs="+", metavar="FILE.nc", default=None,
                        help="dataset file(s) (default: the run's training data, whose test split is used)%(default).0s")
    parser.add_argument("--out", required=True, metavar="RESULT.nc", help="output netCDF file%(default).0s")
    parser.add_argument("--time", type=int, default=None, metavar="T",
                        help="use the transition T -> T+1 (default: see above)%(default).0s")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="use the first N test trajectories (default: all)%(default).0s")
    parser.add_argument("--stride", type=int, default=1, metavar="K",
                        help="translations: shifts 0, K, 2K, ... < resolution")
    parser.add_argument("--factors", type=float, nargs="+", default=None, metavar="A",
                        help="scaling factors (default: 0.5 0.8 1 1.25 2)%(default).0s")
    parser.add_argument("--chunk-size", type=int, default=64, metavar="C",
                        help="model evaluations per compiled call (bounds memory)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)%(default).0s")


def _resolved(paths) -> list[str]:
    return [str(Path(p).expanduser().resolve()) for p in paths]


def _select_samples(run, data_paths, open_dataset, dataset):
    """Trajectory indices in ``dataset`` to evaluate, and a phrase saying where they come from.

    The run's test split indexes the concatenation of its training files. If the
    diagnostic reads those files, the split applies unchanged; if it reads one of them,
    the split is mapped into that file; a file the run never saw is held out entirely.
    """
    import numpy as np

    run_paths = _resolved(getattr(run, "data_paths", None) or [])
    split = getattr(run, "split", None) or {}
    test = np.asarray(split.get("test", []), dtype=np.int64)
    ours = _resolved(data_paths)
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


def run(args) -> int:
    import sys

    import jax.numpy as jnp
    import numpy as np

    from symgrad.diagnostics.equivariance import equivariance_errors
    from symgrad.groups import DEFAULT_SCALE_FACTORS, GROUP_NAMES, named_group
    from symgrad.io import provenance, write_netcdf_atomic

    if args.group not in GROUP_NAMES:
        raise SymgradError(f"unknown group {args.group!r}; choose one of: {', '.join(GROUP_NAMES)}")
    if args.samples is not None and args.samples < 1:
        raise SymgradError(f"--samples must be >= 1, got {args.samples}")
    if args.chunk_size < 1:
        raise SymgradError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise SymgradError(f"run directory {run_dir} does not exist; pass the --out directory of 'symgrad train'")

    try:
        from symgrad.data import open_dataset
        from symgrad.train import load_run
    except ImportError as exc:  # pragma: no cover - only while the package is incomplete
        raise SymgradError(f"this installation lacks {exc.name}; reinstall symgrad (make install)") from None

    try:
        run_ = load_run(run_dir, step=args.step) if args.step is not None else load_run(run_dir)
    except SymgradError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise SymgradError(
            f"cannot load a checkpoint from {run_dir} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "pass a run directory written by 'symgrad train' that holds a checkpoint"
        ) from None

    data_paths = list(args.data) if args.data else list(getattr(run_, "data_paths", None) or [])
    if not data_paths:
        raise SymgradError("the run does not record its data files; pass --data FILE.nc")
    for p in data_paths:
        if not Path(p).is_file():
            raise SymgradError(f"data file {p} does not exist; pass an existing netCDF file to --data")
    dataset = open_dataset(data_paths)

    model_resolution = None
    model = getattr(run_, "model", None)
    if model is not None and isinstance(getattr(model, "config", None), dict):
        model_resolution = model.config.get("resolution")
    if model_resolution is not None and int(model_resolution) != int(dataset.resolution):
        raise SymgradError(
            f"the model was built for {model_resolution}x{model_resolution} states but {data_paths[0]} "
            f"holds {dataset.resolution}x{dataset.resolution}; pass data at the model's resolution"
        )

    if args.time is None:
        time_index = dataset.n_times - 2 if args.group.startswith("translate") else 0
    else:
        time_index = args.time
    if not 0 <= time_index <= dataset.n_times - 2:
        raise SymgradError(
            f"--time {time_index} is not a transition of data with {dataset.n_times} times; "
            f"choose 0..{dataset.n_times - 2}"
        )

    samples, sample_source = _select_samples(run_, data_paths, open_dataset, dataset)
    if args.samples is not None:
        samples = samples[: args.samples]
    states = np.asarray(dataset.states(samples, [time_index, time_index + 1]))
    x, y = states[:, 0], states[:, 1]

    group = named_group(
        args.group, dataset.resolution, stride=args.stride,
        factors=args.factors if args.factors is not None else DEFAULT_SCALE_FACTORS,
    )
    times = np.asarray(dataset.times)
    attrs = provenance(
        run_.config,
        run_dir=str(run_dir.resolve()),
        checkpoint_step=int(run_.step) if run_.step is not None else -1,
        data_files=[str(Path(p).resolve()) for p in data_paths],
        time_index=int(time_index),
        transition_times=[float(times[time_index]), float(times[time_index + 1])],
        sample_source=sample_source,
        model=getattr(model, "name", "unknown"),
        preset=getattr(model, "preset", "unknown"),
        sigma=[float(s) for s in np.asarray(run_.sigma)],
    )
    ds = equivariance_errors(
        run_.apply_fn, run_.params, jnp.asarray(x), jnp.asarray(y), run_.sigma, group,
        args.chunk_size, samples=samples, attrs=attrs,
    )
    n_bad = int((~np.isfinite(ds["equivariance_error"].values)).sum() + (~np.isfinite(ds["test_error"].values)).sum())
    if n_bad:
        print(f"symgrad equivariance: warning: {n_bad} non-finite errors (the model output is not finite)",
              file=sys.stderr)
    out = write_netcdf_atomic(ds, args.out)
    med = ds["equivariance_error_stats"].sel(stat="median").values
    print(f"wrote {out}: group {group.name}, {len(group)} elements x {len(samples)} samples, "
          f"median equivariance error {np.nanmin(med):.3g} .. {np.nanmax(med):.3g}, "
          f"median test error {float(ds['test_error_stats'].sel(stat='median')):.3g}")
    return 0
