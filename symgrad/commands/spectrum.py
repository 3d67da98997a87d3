"""``symgrad spectrum``: the Gauss-Newton spectrum of a trained run, and what a chi solve will cost."""

from __future__ import annotations

import argparse

import contextlib

from symgrad import names
from symgrad.commands._arguments import add_run_arguments, add_samples_argument, chosen_transition, locked_output
from symgrad.commands._settings import add_setting_flags, settings_from_args, shown_as_flags

HELP = "probe the Gauss-Newton matrix G: top eigenvalues, trace, effective dimension d_eff(lambda)"
DESCRIPTION = (
    "Block Lanczos on the Gauss-Newton matrix G of SMSE over B test transitions (the "
    "curvature batch of 'symgrad overlap --samples B'), from K random vectors: the top "
    "eigenvalues with their residuals, tr(G) (Hutchinson, with its standard error), and the "
    "effective dimension d_eff(lambda) = tr(G (G + lambda I)^-1) for a grid of lambda with "
    "its quadrature interval and standard error. d_eff at the overlap's damping predicts "
    "the cost of its chi solves (printed). Writes a netCDF file with --out. See docs/overlap.md."
)


def register(parser: argparse.ArgumentParser) -> None:
    from symgrad.diagnostics.config import SpectrumConfig

    add_run_arguments(parser)
    add_samples_argument(parser, names.DEFAULT_OVERLAP_SAMPLES, " as the curvature batch")
    add_setting_flags(parser, SpectrumConfig)
    parser.add_argument("--out", default=None, metavar="SPECTRUM.nc",
                        help="output netCDF file of the summary (default: printed only)")
    parser.add_argument("--overwrite", action="store_true", help="replace SPECTRUM.nc if it exists")


def execute(args) -> int:
    from symgrad.diagnostics.config import SpectrumConfig

    with locked_output(args.out, args.overwrite) if args.out else contextlib.nullcontext(), \
            shown_as_flags(SpectrumConfig):
        return _execute(args)


def _execute(args) -> int:
    import jax.numpy as jnp
    import numpy as np
    import xarray as xr

    from symgrad import inputs as run_inputs
    from symgrad.diagnostics.config import SpectrumConfig
    from symgrad.diagnostics.ggn import GaussNewtonBlocks
    from symgrad.diagnostics.precision import cast, computing_in
    from symgrad.diagnostics.spectrum import DEFAULT_DAMPINGS, predicted_products, probe_spectrum
    from symgrad.diagnostics.store import spectrum_attrs, spectrum_coords, spectrum_variables
    from symgrad.io import write_netcdf_atomic
    from symgrad.results import finish_result

    inputs = run_inputs.load(args.run, args.data, args.step)
    trained = inputs.trained
    config = settings_from_args(SpectrumConfig, args, damping=trained.info.weight_decay)
    damping = config.damping
    time_index = chosen_transition(args, inputs)
    samples, source, x, _ = run_inputs.test_transitions(inputs, args.samples, time_index)
    dampings = sorted(set(DEFAULT_DAMPINGS) | ({damping} if damping > 0 else set()))
    with computing_in(config.precision) as dtype:
        op = GaussNewtonBlocks(trained.apply_fn, cast(trained.params, dtype), jnp.asarray(x, dtype), np.asarray(trained.sigma))
        summary = probe_spectrum(op, n_vectors=config.probe_vectors, steps=config.probe_steps, dampings=dampings,
                                 seed=config.probe_seed, rank_bound=min(op.n_params, int(np.prod(x.shape))))
    print(f"Gauss-Newton matrix of {summary['n_params']} parameters over {len(samples)} transitions "
          f"(rank <= {summary['rank_bound']}); probe: {summary['probe_vectors']} vectors x "
          f"{summary['probe_steps']} steps = {summary['ggn_products']} products")
    print("top eigenvalues: " + ", ".join(f"{v:.4g}" for v in summary["top_eigenvalues"][:8]))
    print(f"trace: {summary['trace']:.5g} +- {summary['trace_stderr']:.2g}")
    print("lambda        d_eff      quadrature interval      +- stderr")
    for lam, d, lo, hi, se in zip(summary["dampings"], summary["effective_dimension"],
                                  summary["effective_dimension_lower"], summary["effective_dimension_upper"],
                                  summary["effective_dimension_stderr"]):
        print(f"{lam:<10.3g} {d:>10.1f}   [{lo:>10.1f}, {hi:>10.1f}]   {se:>8.2g}")
    if damping > 0:
        lo, hi = predicted_products(summary, damping)
        print(f"a chi solve at lambda {damping:g} (block solver) needs about {lo:.0f} to {hi:.0f} "
              "Gauss-Newton products; a wide interval means the probe did not resolve d_eff there "
              "(raise --lanczos-steps)")
    if args.out:
        ds = xr.Dataset(spectrum_variables(summary), coords=spectrum_coords(summary))
        attrs = run_inputs.provenance(inputs, time_index, source, samples=[int(s) for s in samples],
                                      **config.to_dict(), settings_class="SpectrumConfig", **spectrum_attrs(summary))
        ds = finish_result(ds, diagnostic="spectrum", group="none", title="symgrad Gauss-Newton spectrum probe",
                           attrs=attrs)
        write_netcdf_atomic(ds, args.out)
        print(f"wrote {args.out}")
    return 0
