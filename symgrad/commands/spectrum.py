"""``symgrad spectrum``: the Gauss-Newton spectrum of a trained run, and what a chi solve will cost."""

from __future__ import annotations

import argparse

from symgrad.commands._diagnostic_inputs import load_inputs, load_test_transitions, resolved
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
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'symgrad train'%(default).0s")
    parser.add_argument("--data", nargs="+", metavar="FILE.nc", default=None,
                        help="dataset file(s) (default: the run's data, whose test split is used)%(default).0s")
    parser.add_argument("--samples", type=int, default=64, metavar="B", help="test transitions in the curvature batch")
    parser.add_argument("--time", type=int, default=0, metavar="T", help="use the transition T -> T+1")
    parser.add_argument("--vectors", type=int, default=8, metavar="K", help="random probe vectors (block size)")
    parser.add_argument("--steps", type=int, default=24, metavar="S", help="block Lanczos steps (K x S products)")
    parser.add_argument("--damping", type=float, default=None, metavar="L",
                        help="lambda whose solve cost is predicted (default: the run's weight decay)%(default).0s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe vectors")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)%(default).0s")
    parser.add_argument("--out", default=None, metavar="SPECTRUM.nc", help="also write the summary here%(default).0s")


def run(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import xarray as xr

    from symgrad.diagnostics.ggn import GaussNewtonBlocks
    from symgrad.diagnostics.spectrum import DEFAULT_DAMPINGS, predicted_products, probe_spectrum
    from symgrad.diagnostics.store import spectrum_attrs, spectrum_coords, spectrum_variables
    from symgrad.io import provenance, write_netcdf_atomic

    for name, value in (("--samples", args.samples), ("--vectors", args.vectors), ("--steps", args.steps)):
        if value < 1:
            raise SymgradError(f"{name} must be >= 1, got {value}")
    inputs = load_inputs(args.run, args.data, args.step)
    run_ = inputs.run
    damping = args.damping if args.damping is not None else float(getattr(run_, "weight_decay", 0.0) or 0.0)
    samples, source, x, _ = load_test_transitions(inputs, args.samples, args.time)
    dampings = sorted(set(DEFAULT_DAMPINGS) | ({damping} if damping > 0 else set()))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), run_.params)
        op = GaussNewtonBlocks(run_.apply_fn, params, jnp.asarray(x, jnp.float64), np.asarray(run_.sigma))
        summary = probe_spectrum(op, n_vectors=args.vectors, steps=args.steps, dampings=dampings, seed=args.seed,
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
              "(raise --steps)")
    if args.out:
        model = getattr(run_, "model", None)
        ds = xr.Dataset(spectrum_variables(summary), coords=spectrum_coords(summary))
        ds.attrs.update(spectrum_attrs(summary))
        ds.attrs.update(provenance(run_.config, run_dir=str(inputs.run_dir.resolve()),
                                   data_files=resolved(inputs.data_paths), time_index=int(args.time),
                                   sample_source=source, samples=[int(s) for s in samples],
                                   model=getattr(model, "name", "unknown"), preset=getattr(model, "preset", "unknown")))
        ds.attrs["title"] = "symgrad Gauss-Newton spectrum probe"
        write_netcdf_atomic(ds, args.out)
        print(f"wrote {args.out}")
    return 0
