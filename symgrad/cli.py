"""The ``symgrad`` command. Each subcommand lives in ``symgrad/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``register(parser)`` (adds its arguments)
and ``run(args) -> int``. Heavy imports (jax, xarray) happen inside ``run`` so that
``symgrad --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from symgrad.errors import SymgradError

# Order is the order --help lists them in.
SUBCOMMANDS = ("generate", "solve", "info", "train", "equivariance", "overlap", "spectrum", "merge", "figures",
               "sweep")


def _available_commands():
    for name in SUBCOMMANDS:
        try:
            yield name, importlib.import_module(f"symgrad.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"symgrad.commands.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symgrad",
        description=(
            "Symmetry diagnostics for neural PDE surrogates of 2-D compressible Euler flow: "
            "generate data, train surrogates, measure equivariance errors and gradient "
            "overlaps across group orbits."
        ),
        epilog="Run 'symgrad COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _available_commands():
        p = sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.register(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SymgradError as exc:
        print(f"symgrad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"symgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `symgrad info FILE | head`: the reader went away; that is not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # after BrokenPipeError, an OSError too
        # A failed write anywhere in a command (full disk, no permission): one line.
        from symgrad.io import write_error

        err = write_error(exc)
        if err is None:
            raise
        print(f"symgrad {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
