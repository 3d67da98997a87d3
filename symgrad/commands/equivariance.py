"""``symgrad equivariance``: forward equivariance errors of a trained run over a group."""

from __future__ import annotations

import argparse

from symgrad.commands._arguments import add_diagnostic_arguments, add_samples_argument, chosen_transition, locked_output
from symgrad.commands._settings import add_setting_flags, settings_from_args, shown_as_flags

HELP = "measure forward equivariance errors of a trained surrogate over a symmetry group"
DESCRIPTION = (
    "For every element g of the group and every test transition (x, y), compute "
    "SMSE(f(g x), g f(x)) (equivariance error), SMSE(f(g x), g y) (orbit error) and "
    "SMSE(f(x), y) (test error), next to the persistence baseline SMSE(x, y), and write them with Tukey statistics and provenance "
    "to a netCDF file. Samples are the run's test trajectories, at the transition --time. A Galilean boost acts "
    "on outputs and targets, one step later, as the boost followed by its shift of c dt cells, and its result "
    "carries the data's own defect (the data's solver measured the same way) as the floor."
)


def register(parser: argparse.ArgumentParser) -> None:
    from symgrad.diagnostics.config import EquivarianceConfig

    add_diagnostic_arguments(parser)
    add_samples_argument(parser, None)
    add_setting_flags(parser, EquivarianceConfig)


def execute(args) -> int:
    from symgrad.diagnostics.config import EquivarianceConfig

    with locked_output(args.out, args.overwrite), shown_as_flags(EquivarianceConfig):
        return _execute(args)


def _execute(args) -> int:
    import sys

    import numpy as np

    from symgrad import inputs as run_inputs
    from symgrad.diagnostics.config import EquivarianceConfig
    from symgrad.diagnostics.equivariance import equivariance_errors
    from symgrad.io import write_netcdf_atomic

    config = settings_from_args(EquivarianceConfig, args)
    inputs = run_inputs.load(args.run, args.data, args.step)
    trained = inputs.trained
    time_index = chosen_transition(args, inputs)
    samples, sample_source, x, y = run_inputs.test_transitions(inputs, args.samples, time_index)
    group = run_inputs.group(inputs, args.group, time_index, stride=args.stride, factors=args.factors,
                             shifts=args.shifts)
    times = np.asarray(inputs.dataset.times)
    attrs = run_inputs.provenance(inputs, time_index, sample_source,
                                  transition_times=[float(times[time_index]), float(times[time_index + 1])],
                                  **run_inputs.boost_provenance(inputs, group))
    defect = run_inputs.data_defect(inputs, group, x, time_index)  # boosts: the data's own floor
    ds = equivariance_errors(trained.apply_fn, trained.params, x, y, trained.sigma, group, config, samples=samples,
                             attrs=attrs, data_defect=defect)
    n_bad = int((~np.isfinite(ds["equivariance_error"].values)).sum() + (~np.isfinite(ds["test_error"].values)).sum())
    if n_bad:
        print(f"symgrad equivariance: warning: {n_bad} non-finite errors (the model output is not finite)",
              file=sys.stderr)
    out = write_netcdf_atomic(ds, args.out)
    med = ds["equivariance_error_stats"].sel(stat="median").values
    floor = ""
    if "data_defect_stats" in ds:
        fmed = ds["data_defect_stats"].sel(stat="median").values
        floor = f" (the data's own defect {np.nanmin(fmed):.3g} .. {np.nanmax(fmed):.3g})"
    print(f"wrote {out}: group {group.name}, {len(group)} elements x {len(samples)} samples, "
          f"median equivariance error {np.nanmin(med):.3g} .. {np.nanmax(med):.3g}{floor}, "
          f"median test error {float(ds['test_error_stats'].sel(stat='median')):.3g} "
          f"(persistence baseline {float(ds['persistence_error_stats'].sel(stat='median')):.3g})")
    return 0
