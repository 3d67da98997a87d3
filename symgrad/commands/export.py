"""``symgrad export``: write data in another published layout (The Well's HDF5)."""

from __future__ import annotations

HELP = "write a data file in another published layout: The Well's HDF5 (--format well)"
DESCRIPTION = (
    "Read DATA (anything 'symgrad info' reads: a file of 'symgrad generate', PDEGym shards, a "
    "directory or a glob; one gas) and write all its trajectories as one file of The Well's "
    "HDF5 layout (Ohana et al. 2024; the layout of euler_multi_quadrants_periodicBC): "
    "t0_fields density, energy, pressure (trajectory, time, x, y), t1_fields momentum "
    "(..., 2), dimensions time/x/y, periodic boundary conditions, gamma as a simulation "
    "parameter. Density, momentum and energy are the states bit for bit; pressure is computed "
    "with the data's gamma. Put the file in a train/, valid/ or test/ directory for The "
    "Well's own reader (the_well.data.WellDataset, extra 'well'). Written atomically. Example: "
    "symgrad export out/data/ce-rp.nc --format well --out well/data/train/ce-rp.hdf5"
)

FORMATS = ("well",)


def register(parser) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="data file(s), a directory or a glob (netCDF of symgrad or PDEGym, or The Well's)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="the format of what is written: 'well', The Well's HDF5 layout")
    parser.add_argument("--out", required=True, metavar="OUT.hdf5",
                        help="output file, named *.hdf5 (or *.h5); an existing one is kept unless --overwrite")
    parser.add_argument("--dataset-name", default=None, metavar="NAME",
                        help="the file's dataset_name attribute (default: symgrad_FAMILY)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.hdf5 if it exists")


def execute(args) -> int:
    import json
    from pathlib import Path

    from symgrad.commands._arguments import check_output
    from symgrad.data import open_dataset
    from symgrad.data.well import is_well_file
    from symgrad.data.well_writer import write_well
    from symgrad.errors import SymgradError
    from symgrad.io import provenance

    out = Path(args.out)
    if not is_well_file(out):
        raise SymgradError(f"--out {out} must be named *.hdf5 or *.h5: The Well's readers look for these")
    if out.exists() and not args.overwrite:
        raise SymgradError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    check_output(out, overwrite=True)  # writable, before the long work
    with open_dataset(args.data) as dataset:
        sources = [str(Path(p).resolve()) for p in dataset.paths]
        attrs = {**provenance(), "source_files": json.dumps(sources)}
        write_well(out, dataset, dataset_name=args.dataset_name, attrs=attrs)
        nx, ny = dataset.shape
        print(f"wrote {out}: The Well's layout, {dataset.n_samples} trajectories x {dataset.n_times} times on "
              f"{nx}x{ny}, gamma {dataset.gamma:g}")
    return 0
