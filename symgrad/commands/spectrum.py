"""``symgrad spectrum``: the Gauss-Newton spectrum of a trained run, and what a chi solve will cost."""

from __future__ import annotations

import argparse

import contextlib

from symgrad import names
from symgrad.commands._diagnostic_inputs import (
    add_run_arguments, add_samples_argument, chosen_transition, load_inputs, load_test_transitions, locked_output, result_attrs,
)
from symgrad.errors import SymgradError

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
    add_run_arguments(parser)
    add_samples_argument(parser, names.DEFAULT_OVERLAP_SAMPLES, " as the curvature batch")
    parser.add_argument("--probe-vectors", type=int, default=names.DEFAULT_PROBE_VECTORS, metavar="K",
                        help="random vectors of the spectrum probe (the block size)")
    parser.add_argument("--lanczos-steps", type=int, default=24, metavar="S", help="block Lanczos steps (K x S products)")
    parser.add_argument("--probe-seed", type=int, default=0, help="seed of the probe vectors")
    parser.add_argument("--damping", type=float, default=None, metavar="L",
                        help="lambda of chi = (lambda I + G)^-1 whose solve cost is predicted "
                             "(default: the run's weight decay)")
    parser.add_argument("--out", default=None, metavar="SPECTRUM.nc",
                        help="output netCDF file of the summary (default: printed only)")
    parser.add_argument("--overwrite", action="store_true", help="replace SPECTRUM.nc if it exists")


def run(args) -> int:
    with locked_output(args.out, args.overwrite) if args.out else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import xarray as xr

    from symgrad.diagnostics.ggn import GaussNewtonBlocks
    from symgrad.diagnostics.spectrum import DEFAULT_DAMPINGS, predicted_products, probe_spectrum
    from symgrad.diagnostics.store import spectrum_attrs, spectrum_coords, spectrum_variables
    from symgrad.io import write_netcdf_atomic
    from symgrad.results import finish_result

    for name, value in (("--samples", args.samples), ("--probe-vectors", args.probe_vectors),
                        ("--lanczos-steps", args.lanczos_steps)):
        if value < 1:
            raise SymgradError(f"{name} must be >= 1, got {value}")
    inputs = load_inputs(args.run, args.data, args.step)
    run_ = inputs.run
    damping = args.damping if args.damping is not None else float(getattr(run_, "weight_decay", 0.0) or 0.0)
    time_index = chosen_transition(args, inputs.dataset, inputs.run)
    samples, source, x, _ = load_test_transitions(inputs, args.samples, time_index)
    dampings = sorted(set(DEFAULT_DAMPINGS) | ({damping} if damping > 0 else set()))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), run_.params)
        op = GaussNewtonBlocks(run_.apply_fn, params, jnp.asarray(x, jnp.float64), np.asarray(run_.sigma))
        summary = probe_spectrum(op, n_vectors=args.probe_vectors, steps=args.lanczos_steps, dampings=dampings,
                                 seed=args.probe_seed,
                                 rank_bound=min(op.n_params, int(np.prod(x.shape))))
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
        attrs = result_attrs(inputs, time_index, source, samples=[int(s) for s in samples], **spectrum_attrs(summary))
        ds = finish_result(ds, diagnostic="spectrum", group="none", title="symgrad Gauss-Newton spectrum probe",
                           attrs=attrs)
        write_netcdf_atomic(ds, args.out)
        print(f"wrote {args.out}")
    return 0
