"""``symgrad overlap``: gradient overlaps of a trained run across a symmetry group's orbits."""

from __future__ import annotations

import argparse
from pathlib import Path

from symgrad import names
from symgrad.commands._diagnostic_inputs import (
    add_diagnostic_arguments, add_precision_argument, add_samples_argument, chosen_transition, load_inputs, load_test_transitions, locked_output, result_attrs,
)
from symgrad.errors import SymgradError

HELP = "measure gradient overlaps across group orbits (Euclidean and chi = (lambda I + G)^-1 metrics)"
DESCRIPTION = (
    "For N test transitions (x_i, y_i) and every element g of the group, compute the "
    "per-sample loss gradients u_i^g = grad L(g x_i, g y_i) and v_j = grad L(x_j, y_j), "
    "the overlap matrices M^g_ij = <u_i^g, v_j> in the Euclidean metric and in the "
    "Gauss-Newton metric chi = (lambda I + G)^-1 (G over the untransformed batch), and the "
    "per-sample cosine and Frobenius-normalised overlaps. Every chi value is stored with a "
    "certified error bound; values whose bound exceeds --rtol are flagged "
    "(tolerance_not_met). The default solver shares one block Krylov space among all "
    "right-hand sides and stops on Gauss-Radau bounds of the certified quantities; a short "
    "spectrum probe first predicts the cost and is stored with the result. Partial results "
    "are kept in OUT.partial/ so an interrupted run resumes. See docs/overlap.md."
)

SOLVER_HELP = ("block: one block Lanczos space for every right-hand side, Gauss-Radau stopping (the fast path); "
               "cg: independent CG per right-hand side with the residual rule (the part-1 baseline); "
               "dense: forms G, exact reference for small models")


def register(parser: argparse.ArgumentParser) -> None:
    add_diagnostic_arguments(parser)
    parser.add_argument("--metric", choices=names.METRICS, default="both",
                        help="which overlaps to compute (chi also yields the Euclidean ones)")
    add_samples_argument(parser, names.DEFAULT_OVERLAP_SAMPLES, " (the N of the N x N overlap matrices)")
    parser.add_argument("--rtol", type=float, default=names.DEFAULT_RTOL,
                        help="requested relative accuracy of every chi value")
    parser.add_argument("--damping", type=float, default=None, metavar="L",
                        help="lambda of chi = (lambda I + G)^-1 (default: the run's weight decay)")
    parser.add_argument("--curvature-samples", type=int, default=None, metavar="B",
                        help="curvature batch: the first B of the N samples (default: all N)")
    parser.add_argument("--solver", choices=names.SOLVERS, default=names.DEFAULT_SOLVER, help=SOLVER_HELP)
    parser.add_argument("--max-iterations", type=int, default=names.DEFAULT_MAX_ITERATIONS, metavar="K",
                        help="solver iterations at most (block steps, or CG steps per right-hand side)")
    parser.add_argument("--rhs-chunk", type=int, default=None, metavar="K",
                        help="right-hand sides solved together, bounding memory (default: all)")
    parser.add_argument("--basis-memory", type=float, default=None, metavar="GB",
                        help="GB of Lanczos vectors kept for reorthogonalisation "
                             "(default: a quarter of the device memory)")
    parser.add_argument("--product-chunk", type=int, default=None, metavar="V",
                        help="vectors per vmapped Gauss-Newton product, bounding activation memory on big models "
                             "(default: the whole block)")
    parser.add_argument("--probe-vectors", type=int, default=names.DEFAULT_PROBE_VECTORS, metavar="K",
                        help="random vectors of the spectrum probe stored with the result (0: no probe)")
    parser.add_argument("--grad-chunk", type=int, default=names.DEFAULT_GRAD_CHUNK, metavar="C",
                        help="per-example gradients computed C at a time (bounds memory)")
    add_precision_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    with locked_output(args.out, args.overwrite):
        return _run(args)


def _run(args) -> int:
    import sys

    import numpy as np

    from symgrad import preemption
    from symgrad.diagnostics.overlap import OverlapInterrupted, compute_overlaps, remove_partials
    from symgrad.errors import EXIT_PREEMPTED
    from symgrad.groups import named_group
    from symgrad.io import partial_dir, write_netcdf_atomic

    for name, value in (("--samples", args.samples), ("--max-iterations", args.max_iterations),
                        ("--grad-chunk", args.grad_chunk),
                        ("--product-chunk", 1 if args.product_chunk is None else args.product_chunk),
                        ("--rhs-chunk", 1 if args.rhs_chunk is None else args.rhs_chunk)):
        if value < 1:
            raise SymgradError(f"{name} must be >= 1, got {value}")
    if not 0 < args.rtol < 1:
        raise SymgradError(f"--rtol must lie in (0, 1) (a relative accuracy such as 1e-6), got {args.rtol}")
    if args.basis_memory is not None and not args.basis_memory >= 0:
        raise SymgradError(f"--basis-memory must be >= 0 GB, got {args.basis_memory}")
    inputs = load_inputs(args.run, args.data, args.step)
    run_, run_dir, data_paths, dataset = inputs
    damping = args.damping if args.damping is not None else float(getattr(run_, "weight_decay", 0.0) or 0.0)
    if args.metric != "euclidean" and not damping > 0:
        source = f"--damping {args.damping:g}" if args.damping is not None else f"the run's weight decay {damping:g}"
        raise SymgradError(f"the chi metric needs damping lambda > 0, got {source}; pass --damping L with L > 0 "
                           "(or --metric euclidean)")
    time_index = chosen_transition(args, dataset, run_)
    samples, source, x, y = load_test_transitions(inputs, args.samples, time_index)
    n_curv = args.curvature_samples or args.samples
    if not 1 <= n_curv <= args.samples:
        raise SymgradError(f"--curvature-samples must be in 1..{args.samples}, got {n_curv}")
    group = named_group(args.group, dataset.resolution, stride=args.stride, factors=args.factors)
    attrs = result_attrs(inputs, time_index, source, diagnostic="overlap",
                         damping_source="--damping" if args.damping is not None else "run weight decay")
    out = Path(args.out)
    partial = partial_dir(out)
    with preemption.stop_on_sigterm():  # SIGTERM: stop after the current chunk, keep the finished ones
        try:
            ds = compute_overlaps(
                run_.apply_fn, run_.params, x, y, np.asarray(run_.sigma), group,
                metric=args.metric, damping=damping, rtol=args.rtol, solver=args.solver,
                max_iterations=args.max_iterations, x_curvature=x[:n_curv], grad_chunk_size=args.grad_chunk,
                rhs_chunk_size=args.rhs_chunk, vectors_per_product=args.product_chunk, precision=args.precision,
                spectrum_vectors=args.probe_vectors,
                basis_memory=None if args.basis_memory is None else int(args.basis_memory * 2**30),
                sample_ids=samples, partial_dir=partial, progress=not args.no_progress, attrs=attrs,
            )
        except OverlapInterrupted as exc:
            if not preemption.requested():
                raise
            print(f"symgrad overlap: {exc}; the finished chunks are kept in {partial}: rerun the same "
                  "command to continue", file=sys.stderr)
            return EXIT_PREEMPTED
    write_netcdf_atomic(ds, out)
    remove_partials(partial)
    msg = f"wrote {out}: group {group.name}, {len(group)} elements x {len(samples)} samples"
    if "overlap_cosine_chi" in ds:
        cos = ds["overlap_cosine_chi"].values
        bound = float(np.nanmax(ds["overlap_cosine_chi_bound"].values))
        msg += (f", chi cosine median {np.nanmedian(cos):.4g} (bounds <= {bound:.2g}), "
                f"{ds.attrs['ggn_products']} Gauss-Newton products")
    print(msg)
    n_flagged = int(ds.attrs.get("n_flagged", 0))
    if n_flagged:
        print(f"symgrad overlap: warning: {n_flagged} (element, sample) values did not reach --rtol {args.rtol}; "
              "they are flagged in 'tolerance_not_met' (raise --max-iterations, or loosen --rtol)", file=sys.stderr)
    return 0
