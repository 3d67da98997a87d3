"""The arguments the diagnostic commands share (the run, its data, the samples, the group,
the output) and the one-line checks of an output file; the loading itself is the library's
(``symgrad.inputs``), whose errors ``_settings.shown_as_flags`` spells with these flags."""

from __future__ import annotations

import contextlib
from pathlib import Path

from symgrad import names
from symgrad.errors import SymgradError


def add_run_arguments(parser, *, required: bool = True) -> None:
    """What every command that reads a trained run takes: the run, its checkpoint, the data,
    the test samples and the transition."""
    parser.add_argument("--run", required=required, metavar="RUN_DIR", help="run directory written by 'symgrad train'"
                        + ("" if required else " (default: none; needed unless --plan)"))
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--data", nargs="+", metavar="FILE.nc", default=None,
                        help="dataset file(s) (default: the run's data, whose test split is used)")
    parser.add_argument("--time", type=int, default=None, metavar="T",
                        help="use the transition T -> T+1 of each test trajectory " + names.DEFAULT_TIME_HELP)


def add_samples_argument(parser, default: int | None, use: str = "") -> None:
    parser.add_argument("--samples", type=int, default=default, metavar="N",
                        help=f"use the first N test trajectories{use}" + ("" if default else " (default: all)"))


def add_diagnostic_arguments(parser, *, run_required: bool = True) -> None:
    """The arguments every diagnostic over a group takes: the run, the group, the output
    (``run_required=False``: the command checks --run and --out itself)."""
    add_run_arguments(parser, required=run_required)
    parser.add_argument("--group", required=True, choices=names.GROUPS, help="symmetry group")
    parser.add_argument("--out", required=run_required, metavar="RESULT.nc",
                        help="output netCDF file; an existing one is kept unless --overwrite"
                        + ("" if run_required else " (default: none; needed unless --plan)"))
    parser.add_argument("--overwrite", action="store_true", help="replace RESULT.nc if it exists")
    parser.add_argument("--stride", type=int, default=1, metavar="K",
                        help="translations: shifts 0, K, 2K, ... < resolution")
    parser.add_argument("--factors", type=float, nargs="+", default=names.DEFAULT_SCALE_FACTORS, metavar="A",
                        help="scaling factors")
    parser.add_argument("--shifts", type=int, nargs="+", default=names.DEFAULT_BOOST_SHIFTS, metavar="K",
                        help="boosts: cells the boosted flow moves per time step, c = K dx / dt for the data's "
                             "resolution and time step")


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise SymgradError(f"{out} exists (a finished result); pass --overwrite to replace it, or choose another --out")


def check_output(path, overwrite: bool) -> Path:
    """Refuse to replace a finished result without ``--overwrite``, and fail *before* the long
    work when ``path`` cannot be written (a directory, a missing parent that cannot be made,
    a read-only or full file system)."""
    import os
    import tempfile

    out = Path(path)
    if out.is_dir():
        raise SymgradError(f"--out {out} is a directory; pass a file name such as {out / 'result.nc'}")
    _refuse_existing(out, overwrite)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes permission checks on read-only mounts.
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SymgradError(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None
    return out


@contextlib.contextmanager
def locked_output(path, overwrite: bool):
    """``check_output``, then hold ``.RESULT.nc.lock`` (one writer per result, partials
    included) until the result is written; the existence check is repeated once the lock is
    held, so that a run that finished meanwhile is not replaced."""
    from symgrad.io import ExclusiveLock

    out = check_output(path, overwrite)
    with ExclusiveLock(out.with_name(f".{out.name}.lock"), f"the output {out}"):
        _refuse_existing(out, overwrite)
        yield out


def chosen_transition(args, inputs) -> int:
    """``--time``, or the default transition of the command's group and run."""
    from symgrad.inputs import default_transition

    return int(args.time) if args.time is not None else default_transition(inputs, getattr(args, "group", None))
