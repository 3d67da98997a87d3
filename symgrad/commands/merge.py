"""``symgrad merge``: stack result files of one diagnostic and group into one dataset."""

from __future__ import annotations

HELP = "stack result files of one diagnostic and group into one dataset with model/preset/seed/family"
DESCRIPTION = (
    "Read result files of 'symgrad equivariance' or 'symgrad overlap' for one group (one per "
    "trained run) and write one netCDF file with a new dimension 'run', whose coordinates "
    "model, preset, seed and family say which run each slice comes from. Sample positions "
    "replace the runs' own test-trajectory indices (kept in sample_id), so that runs of "
    "different seeds stack. 'symgrad figures' draws the merged file directly."
)


def register(parser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULT.nc",
                        help="result files of one diagnostic and group")
    parser.add_argument("--out", required=True, metavar="STUDY.nc",
                        help="output netCDF file of the merged results; an existing one is kept unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace STUDY.nc if it exists")


def execute(args) -> int:
    from symgrad.commands._arguments import locked_output
    from symgrad.io import write_netcdf_atomic
    from symgrad.results import merge_results

    with locked_output(args.out, args.overwrite):
        ds = merge_results(args.results)
        out = write_netcdf_atomic(ds, args.out)
    models = sorted(set(ds["model"].values.tolist()))
    print(f"wrote {out}: {ds['diagnostic'].item()} {ds['group'].item()}, {ds.sizes['run']} runs "
          f"(models {', '.join(models)})")
    return 0
