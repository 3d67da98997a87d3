"""``symgrad report``: the study's figures, tables and provenance in one Markdown and one HTML file."""

from __future__ import annotations

import argparse

from symgrad.commands.figures import add_figure_arguments

HELP = "write report.md and a self-contained report.html (figures embedded) from result files"
DESCRIPTION = (
    "Draw the figures of 'symgrad figures' into DIR/figures and write DIR/report.md and "
    "DIR/report.html: per group and model, medians and quartiles of the equivariance errors and "
    "gradient overlaps, the test and orbit errors beside the persistence baseline SMSE(x, y), "
    "the solver accuracy reached (largest certified bound, values flagged), the null-space "
    "share of the chi norms, training curves of --runs, the provenance of every number, and "
    "a short 'how to read this'. The HTML file embeds its figures and stands on its own."
)


def register(parser: argparse.ArgumentParser) -> None:
    add_figure_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory of the report")


def execute(args) -> int:
    from symgrad.report import write_report

    md, page = write_report(args.results, args.out, runs=args.runs, formats=args.format)
    print(f"wrote {md} and {page}")
    return 0
