"""``symgrad solve``: evolve user-given initial states (time index 0 of a data file)."""

from symgrad.commands.generate import add_output_arguments, add_euler_arguments, command_hints, run_settings

HELP = "evolve the initial states (time index 0) of a data file and write their trajectories"
DESCRIPTION = (
    "Read time index 0 of every trajectory of INIT (same layout as 'symgrad generate' writes, "
    "or a PDEGym file; a directory or glob of shards also works), evolve each to --times "
    "equispaced times on [0, T] and write OUT in the same layout. Chunked and resumable like "
    "'symgrad generate'. gamma is taken from INIT (1.4 where absent)."
)


def register(parser) -> None:
    parser.add_argument("init", metavar="INIT", help="data file (or directory/glob of shards) with the initial states")
    parser.add_argument("--t-final", type=float, required=True, metavar="T", help="last stored time")
    parser.add_argument("--times", type=int, required=True, metavar="K", help="stored times, t=0 included")
    parser.add_argument("--out", required=True, metavar="OUT.nc", help="output netCDF file")
    add_euler_arguments(parser)
    add_output_arguments(parser)


def execute(args) -> int:
    from symgrad.data import solve_dataset

    with command_hints(args.out):
        out = solve_dataset(args.init, args.out, t_final=args.t_final, n_times=args.times, **run_settings(args))
    print(f"wrote {out}: {args.times} times on [0, {args.t_final}]")
    return 0
