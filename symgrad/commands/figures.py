"""``symgrad figures``: Tukey box plots of equivariance and overlap result files."""

from __future__ import annotations

import argparse
from pathlib import Path

from symgrad import names
from symgrad.errors import SymgradError

HELP = "draw Tukey box plots (PNG and PDF) of equivariance and overlap result files"
DESCRIPTION = (
    "For every per-sample variable of each result file (dims (element, sample) or (sample)), "
    "draw one box per group element: median, quartiles, whiskers at 1.5 IQR, outliers. "
    "Errors are drawn on a log axis. Files are named <result stem>_<variable>.<png|pdf>."
)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULT.nc",
                        help="result files of 'symgrad equivariance'/'overlap', or merged ones of 'symgrad merge'")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory of the figures")
    parser.add_argument("--format", nargs="+", default=list(names.DEFAULT_FIGURE_FORMATS), choices=names.FIGURE_FORMATS,
                        help="image formats")


def run(args) -> int:
    from symgrad import plots

    import xarray as xr

    for p in args.results:
        if not Path(p).is_file():
            raise SymgradError(f"result file {p} does not exist; pass files written by 'symgrad equivariance' or 'overlap'")
    from symgrad.results import split_runs

    empty = []
    for p in args.results:
        try:
            with xr.open_dataset(p) as ds:
                if not plots.per_sample_variables(split_runs(ds)[0][1]):
                    empty.append(p)
        except (OSError, ValueError) as exc:
            raise SymgradError(f"cannot read {p} as netCDF ({exc}); pass a result file") from None
    if len(empty) == len(args.results):
        raise SymgradError("no per-sample variables (dims (element, sample)) in the given files; pass result files")
    written = plots.figures([p for p in args.results if p not in empty], args.out, formats=args.format)
    for p in empty:
        print(f"symgrad figures: skipped {p}: no per-sample variables")
    print(f"wrote {len(written)} files to {args.out}")
    return 0
