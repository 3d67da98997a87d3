"""``symgrad figures``: the study's figures from equivariance and overlap result files."""

from __future__ import annotations

import argparse

from symgrad import names

HELP = "draw the study's figures (PNG and PDF) from result files of several models, seeds and groups"
DESCRIPTION = (
    "Pool the result files per model (all seeds and samples), store the Tukey statistics in "
    "DIR/statistics_<diagnostic>_<group>.nc and draw from those files: fig1_<group> (D4: one "
    "candle per model side by side per element; equivariance error, chi and Euclidean "
    "overlaps), fig2_translations (median and quartiles against the shift, x and y), "
    "fig3_scale (against the factor), solver_<group>_<run> (certified bounds, iterations, "
    "residuals, null-space share of each chi result), and training (curves of --runs)."
)


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``figures`` and ``report`` share."""
    parser.add_argument("results", nargs="+", metavar="RESULT.nc",
                        help="result files of 'symgrad equivariance'/'overlap', or merged ones of 'symgrad merge'")
    parser.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR",
                        help="run directories of 'symgrad train' whose training curves (metrics.nc) to draw "
                             "(default: none)")
    parser.add_argument("--format", nargs="+", default=list(names.DEFAULT_FIGURE_FORMATS), choices=names.FIGURE_FORMATS,
                        help="the format of what is written: image formats")


def register(parser: argparse.ArgumentParser) -> None:
    add_figure_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory of the figures and statistics")


def execute(args) -> int:
    from symgrad import plots

    written = plots.figures(args.results, args.out, runs=args.runs, formats=args.format)
    n_stats = sum(p.suffix == ".nc" for p in written)
    print(f"wrote {len(written) - n_stats} figure files and {n_stats} statistics files to {args.out}")
    return 0
