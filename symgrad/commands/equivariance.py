"""``symgrad equivariance``: forward equivariance errors of a trained run over a group."""

from __future__ import annotations

import argparse

from symgrad import names
from symgrad.commands._diagnostic_inputs import (
    add_diagnostic_arguments, add_precision_argument, add_samples_argument, check_transition, chosen_transition, first_test_samples, load_inputs, locked_output,
    result_attrs,
)
from symgrad.errors import SymgradError

HELP = "measure forward equivariance errors of a trained surrogate over a symmetry group"
DESCRIPTION = (
    "For every element g of the group and every test transition (x, y), compute "
    "SMSE(f(g x), g f(x)) (equivariance error), SMSE(f(g x), g y) (orbit error) and "
    "SMSE(f(x), y) (test error), next to the persistence baseline SMSE(x, y), and write them with Tukey statistics and provenance "
    "to a netCDF file. Samples are the run's test trajectories, at the transition --time."
)


def register(parser: argparse.ArgumentParser) -> None:
    add_diagnostic_arguments(parser)
    add_samples_argument(parser, None)
    parser.add_argument("--eval-chunk", type=int, default=names.EVAL_CHUNK, metavar="C",
                        help="model evaluations per compiled call (bounds memory)")
    add_precision_argument(parser)


def run(args) -> int:
    with locked_output(args.out, args.overwrite):
        return _run(args)


def _run(args) -> int:
    import sys

    import jax.numpy as jnp
    import numpy as np

    from symgrad.diagnostics.equivariance import equivariance_errors
    from symgrad.groups import named_group
    from symgrad.io import write_netcdf_atomic

    if args.samples is not None and args.samples < 1:
        raise SymgradError(f"--samples must be >= 1, got {args.samples}")
    if args.eval_chunk < 1:
        raise SymgradError(f"--eval-chunk must be >= 1, got {args.eval_chunk}")
    inputs = load_inputs(args.run, args.data, args.step)
    run_, run_dir, data_paths, dataset = inputs

    time_index = chosen_transition(args, dataset, run_)
    check_transition(time_index, dataset)

    samples, sample_source = first_test_samples(inputs, args.samples)
    states = np.asarray(dataset.states(samples, [time_index, time_index + 1]))
    x, y = states[:, 0], states[:, 1]

    group = named_group(
        args.group, dataset.resolution, stride=args.stride,
        factors=args.factors)
    times = np.asarray(dataset.times)
    attrs = result_attrs(inputs, time_index, sample_source,
                         transition_times=[float(times[time_index]), float(times[time_index + 1])])
    ds = equivariance_errors(
        run_.apply_fn, run_.params, jnp.asarray(x), jnp.asarray(y), run_.sigma, group,
        args.eval_chunk, samples=samples, attrs=attrs, precision=args.precision,
    )
    n_bad = int((~np.isfinite(ds["equivariance_error"].values)).sum() + (~np.isfinite(ds["test_error"].values)).sum())
    if n_bad:
        print(f"symgrad equivariance: warning: {n_bad} non-finite errors (the model output is not finite)",
              file=sys.stderr)
    out = write_netcdf_atomic(ds, args.out)
    med = ds["equivariance_error_stats"].sel(stat="median").values
    print(f"wrote {out}: group {group.name}, {len(group)} elements x {len(samples)} samples, "
          f"median equivariance error {np.nanmin(med):.3g} .. {np.nanmax(med):.3g}, "
          f"median test error {float(ds['test_error_stats'].sel(stat='median')):.3g} "
          f"(persistence baseline {float(ds['persistence_error_stats'].sel(stat='median')):.3g})")
    return 0
