"""``symgrad overlap``: gradient overlaps of a trained run across a symmetry group's orbits."""

from __future__ import annotations

import argparse

from symgrad import names
from symgrad.commands._arguments import add_diagnostic_arguments, add_samples_argument, chosen_transition, locked_output
from symgrad.commands._settings import add_setting_flags, settings_from_args, shown_as_flags

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


def register(parser: argparse.ArgumentParser) -> None:
    from symgrad.diagnostics.config import OverlapConfig

    add_diagnostic_arguments(parser, run_required=False)
    add_samples_argument(parser, names.DEFAULT_OVERLAP_SAMPLES, " (the N of the N x N overlap matrices)")
    add_setting_flags(parser, OverlapConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    plan = parser.add_argument_group(
        "planning", "--plan prints the memory plan per device (the right-hand-side chunks, the vectors per "
        "product, the stored Lanczos vectors, every array counted) and the cost forecast, then stops: nothing is "
        "solved and the devices need not be here (--device-memory 80GB --devices 8). With --run it plans for "
        "that run's model and test batch; without, for an untrained --model --preset at --resolution.")
    plan.add_argument("--plan", action="store_true", help="print the plan and stop (no --out needed)")
    plan.add_argument("--model", choices=names.MODELS,
                      help="architecture to plan for, untrained, with --plan and no --run (default: none)")
    plan.add_argument("--preset", choices=names.PRESETS, default="paper",
                      help="model size of that architecture (default: paper)")
    plan.add_argument("--resolution", type=int, default=128,
                      help="grid cells per direction of its states (default: 128)")


def execute(args) -> int:
    from symgrad.diagnostics.config import OverlapConfig
    from symgrad.errors import SymgradError

    if args.plan:
        with shown_as_flags(OverlapConfig):
            return _print_plan(args)
    if args.run is None or args.out is None:
        raise SymgradError("symgrad overlap needs --run and --out (or --plan to print the plan without solving)")
    with locked_output(args.out, args.overwrite), shown_as_flags(OverlapConfig):
        return _execute(args)


def _print_plan(args) -> int:
    """``--plan``: the memory plan of the run's (or an untrained model's) overlap computation."""
    import jax
    import numpy as np

    from symgrad import inputs as run_inputs
    from symgrad.diagnostics.config import OverlapConfig
    from symgrad.diagnostics.overlap import overlap_forecast, overlap_plan
    from symgrad.errors import SymgradError
    from symgrad.groups import named_group

    if args.run is not None:
        inputs = run_inputs.load(args.run, args.data, args.step)
        config = settings_from_args(OverlapConfig, args, damping=inputs.trained.info.weight_decay)
        time_index = chosen_transition(args, inputs)
        _, _, x, y = run_inputs.test_transitions(inputs, args.samples, time_index)
        apply_fn, params = inputs.trained.apply_fn, inputs.trained.params
        group = run_inputs.group(inputs, args.group, time_index, stride=args.stride, factors=args.factors,
                                 shifts=args.shifts)
        what = f"run {args.run}"
    elif args.model is not None:
        from symgrad.models.registry import build

        config = settings_from_args(OverlapConfig, args)
        model = build(args.model, args.preset, args.resolution)
        params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
        apply_fn, resolution = model.apply, args.resolution
        # random states: every element but the identity moves them
        x = y = np.random.default_rng(0).normal(size=(args.samples or 1, resolution, resolution, 4))
        what = f"untrained {args.model} ({args.preset}) at {resolution}x{resolution}"
        # no data, no time step: boosts plan with one of 1/resolution (c = K); the plan only counts arrays
        group = named_group(args.group, resolution, stride=args.stride, factors=args.factors,
                            time_step=1.0 / resolution, shifts=args.shifts)
    else:
        raise SymgradError("--plan needs --run RUN_DIR, or --model with --preset and --resolution")
    print(f"symgrad overlap --plan: {what}, group {group.name} ({len(group)} elements), metric {config.metric}, "
          f"lambda {config.damping:g}, rtol {config.rtol:g}")
    if args.run is not None and config.device_memory is None and config.wants_chi:
        # the devices are here: the forecast too (a linearisation, the probe, a timed product)
        plan, forecast = overlap_forecast(apply_fn, params, x, y, np.asarray(inputs.trained.sigma), group, config)
        print(plan.describe([str(g) for g in group.elements]))
        print(forecast.describe())
        return 0
    plan = overlap_plan(apply_fn, params, x, y, group, config)
    print(plan.describe([str(g) for g in group.elements]))
    print("forecast: needs the trained model on the devices themselves (--run, without --device-memory); "
          "benchmarks/device_check.py times the products on a GPU")
    return 0


def _execute(args) -> int:
    import sys
    from pathlib import Path

    import numpy as np

    from symgrad import inputs as run_inputs
    from symgrad import preemption
    from symgrad.diagnostics.config import OverlapConfig
    from symgrad.diagnostics.overlap import OverlapInterrupted, compute_overlaps, remove_partials
    from symgrad.errors import EXIT_PREEMPTED
    from symgrad.io import partial_dir, write_netcdf_atomic

    inputs = run_inputs.load(args.run, args.data, args.step)
    trained = inputs.trained
    config = settings_from_args(OverlapConfig, args, damping=trained.info.weight_decay)
    time_index = chosen_transition(args, inputs)
    samples, source, x, y = run_inputs.test_transitions(inputs, args.samples, time_index)
    group = run_inputs.group(inputs, args.group, time_index, stride=args.stride, factors=args.factors,
                             shifts=args.shifts)
    attrs = run_inputs.provenance(inputs, time_index, source, diagnostic="overlap",
                                  damping_source="--damping" if hasattr(args, "damping") else "run weight decay",
                                  **run_inputs.boost_provenance(inputs, group))
    out = Path(args.out)
    partial = partial_dir(out)
    with preemption.stop_on_sigterm():  # SIGTERM: stop after the current chunk, keep the finished ones
        try:
            ds = compute_overlaps(trained.apply_fn, trained.params, x, y, np.asarray(trained.sigma), group, config,
                                  sample_ids=samples, partial_dir=partial, progress=not args.no_progress, attrs=attrs)
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
        print(f"symgrad overlap: warning: {n_flagged} (element, sample) values did not reach --rtol {config.rtol}; "
              "they are flagged in 'tolerance_not_met' (raise --max-iterations, or loosen --rtol)", file=sys.stderr)
    return 0
