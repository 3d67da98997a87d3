"""``symgrad generate``: simulate trajectories of an initial-condition family into a data file."""

HELP = "generate Euler trajectories (CE-RP, CE-CRP, CE-RPUI) into a PDEGym-layout netCDF file"
DESCRIPTION = (
    "Draw initial states of a family, evolve them with the finite-volume solver and write "
    "OUT (netCDF4, variable 'data' of dims (sample, time, channel, x, y), channels rho, u, v, p, E). "
    "Work is done in chunks kept in OUT.partial/; a killed run resumes when the same command is "
    "run again, and OUT appears only when complete. Same arguments give the same data."
)

import contextlib
import sys

from symgrad import names


def add_euler_arguments(parser) -> None:
    """The Euler solver's flags (fields of ``symgrad.euler.EulerConfig``), shared by ``generate`` and ``solve``."""
    g = parser.add_argument_group("Euler solver")
    g.add_argument("--limiter", choices=names.LIMITERS, default="mc", help="TVD slope limiter")
    g.add_argument("--reconstruction", choices=names.RECONSTRUCTIONS, default="primitive",
                   help="variables the MUSCL reconstruction limits")
    g.add_argument("--rk", type=int, choices=names.RK_STAGES, default=2, help="SSP Runge-Kutta stages")
    g.add_argument("--cfl", type=float, default=0.4, help="Courant number")
    g.add_argument("--float64", action="store_true", help="solve in float64 (the file stores float32)")


def add_output_arguments(parser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--chunk-size", type=int, default=names.GENERATE_CHUNK_SIZE, metavar="K",
                   help="trajectories per chunk (the unit of work that a resumed run skips)")
    g.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


@contextlib.contextmanager
def command_hints(out):
    """The CLI's words for what the library reports: an existing output names --out and
    --overwrite; on Ctrl-C, finished chunks are kept and the same command resumes."""
    from symgrad.data.generate import OutputExistsError
    from symgrad.errors import SymgradError

    try:
        yield
    except OutputExistsError as exc:
        raise SymgradError(f"{exc.out} exists and was not made by these arguments; choose another --out, "
                           "delete it, or pass --overwrite") from None
    except KeyboardInterrupt:
        from symgrad.io import partial_dir

        if partial_dir(out).exists():
            print(f"finished chunks are kept in {partial_dir(out)}; run the same command again to resume",
                  file=sys.stderr)
        raise


def run_settings(args) -> dict:
    """The keywords of ``generate_dataset`` and ``solve_dataset`` that their shared flags set."""
    return {"chunk_size": args.chunk_size, "float64": args.float64, "overwrite": args.overwrite,
            "progress": not args.no_progress,
            "euler_config": {"limiter": args.limiter, "reconstruction": args.reconstruction,
                              "rk_stages": args.rk, "cfl": args.cfl}}


def register(parser) -> None:
    parser.add_argument("--family", required=True, choices=names.FAMILIES, help="initial-condition family")
    parser.add_argument("--trajectories", type=int, required=True, metavar="N", help="number of trajectories")
    parser.add_argument("--resolution", type=int, default=128, help="grid cells per direction")
    parser.add_argument("--times", type=int, default=21, help="stored times, t=0 included, equispaced")
    parser.add_argument("--t-final", type=float, default=1.0, help="last stored time")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial states")
    parser.add_argument("--gamma", type=float, default=1.4, help="ratio of specific heats")
    parser.add_argument("--on-failure", choices=names.ON_FAILURE, default="error",
                        help="a trajectory the solver cannot continue: stop with an error naming it, or "
                             "replace its initial state by a fresh draw (listed in the file)")
    parser.add_argument("--out", required=True, metavar="OUT.nc", help="output netCDF file")
    add_euler_arguments(parser)
    add_output_arguments(parser)


def execute(args) -> int:
    from symgrad.data import generate_dataset

    with command_hints(args.out):
        out = generate_dataset(args.out, args.family, args.trajectories, args.resolution, n_times=args.times,
                               t_final=args.t_final, seed=args.seed, gamma=args.gamma, on_failure=args.on_failure,
                               **run_settings(args))
    print(f"wrote {out}: {args.trajectories} {args.family} trajectories, {args.times} times, "
          f"{args.resolution}x{args.resolution}")
    return 0
