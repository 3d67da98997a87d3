"""The ``symgrad`` command. Each subcommand lives in ``symgrad/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``register(parser)`` (adds its arguments)
and ``execute(args) -> int``. Heavy imports (jax, xarray) happen inside ``execute`` so that
``symgrad --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from symgrad.errors import SymgradError

# Order is the order --help lists them in.
SUBCOMMANDS = ("generate", "solve", "info", "export", "train", "equivariance", "overlap", "spectrum", "merge", "figures",
               "report", "sweep")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other error, and say where the help is."""

    def error(self, message):
        # argparse: "argument --group: invalid choice: 'so2' (choose from 'd4', 'scale')"
        choice = re.fullmatch(r"argument (\S+?)(?:/\S+)?: invalid choice: (.+) \(choose from (.+)\)", message)
        if choice:
            flag, value, options = choice.groups()
            name = flag.lstrip("-").replace("-", " ")
            message = f"unknown {name} {value}; choose one of: {options.replace(chr(39), '')}"
        raise _UsageError(f"{self.prog}: error: {message}; see '{self.prog} --help'")


class HelpFormatter(argparse.HelpFormatter):
    """Every subcommand's help: a default is shown as ``(default: X)`` after the help text,
    lists as space-separated values, and only where there is one (not for required flags,
    switches, or a help text that already says what the default is)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("(default:" in text or action.required or not action.option_strings or default is None
                or default is argparse.SUPPRESS or isinstance(default, bool)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def _commands():
    for name in SUBCOMMANDS:
        yield name, importlib.import_module(f"symgrad.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="symgrad",
        description=(
            "Symmetry diagnostics for neural PDE surrogates of 2-D compressible Euler flow: "
            "generate data, train surrogates, measure equivariance errors and gradient "
            "overlaps across group orbits."
        ),
        epilog="Run 'symgrad COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _commands():
        p = sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.register(p)
        p.set_defaults(_execute=module.execute)
    return parser


def main(argv: list[str] | None = None) -> int:
    from symgrad.io import running_command

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        with running_command(argv):
            return int(args._execute(args) or 0)
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
