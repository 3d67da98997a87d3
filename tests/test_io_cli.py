"""Atomic result files, provenance, and the CLI's help and error handling."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from symgrad import cli, io
from symgrad.errors import SymgradError


def test_write_netcdf_atomic_round_trip(tmp_path):
    ds = xr.Dataset({"a": (("element", "sample"), np.arange(6.0).reshape(2, 3))},
                    attrs=io.provenance({"k": 1}, note="test"))
    path = io.write_netcdf_atomic(ds, tmp_path / "sub" / "r.nc")
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.nc"]  # no temporary left
    back = xr.open_dataset(path)
    np.testing.assert_array_equal(back["a"].values, ds["a"].values)
    assert json.loads(back.attrs["config"]) == {"k": 1}
    assert "jax" in json.loads(back.attrs["package_versions"])
    back.close()


def test_failed_write_leaves_no_file(tmp_path):
    class Boom(xr.Dataset):
        __slots__ = ()

        def to_netcdf(self, *a, **k):  # noqa: D401 - simulate a crash mid-write
            with open(a[0], "w") as fh:
                fh.write("partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.write_netcdf_atomic(Boom({"a": ("x", [1.0])}), tmp_path / "r.nc")
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_available_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, _ in cli._commands():
        assert name in out


def _command_modules() -> dict:
    """Every module of symgrad/commands/ that is a subcommand (defines HELP, register and
    run), found on disk rather than through ``cli.SUBCOMMANDS``."""
    import importlib
    import pkgutil

    import symgrad.commands

    found = {}
    for info in pkgutil.iter_modules(symgrad.commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"symgrad.commands.{info.name}")
        if all(hasattr(module, attr) for attr in ("HELP", "register", "execute")):
            found[info.name] = module
    return found


def _subparsers() -> dict:
    """The subcommands as argparse registered them: name -> parser."""
    import argparse

    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("name", sorted(_command_modules()))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: symgrad " + name in capsys.readouterr().out


def test_symgrad_error_becomes_one_line(monkeypatch, capsys):
    import types

    def boom(args):
        raise SymgradError(f"the file {args.path} is missing; run 'symgrad generate' first")

    fake = types.SimpleNamespace(HELP="fake", register=lambda p: p.add_argument("path"), execute=boom)
    monkeypatch.setattr(cli, "_commands", lambda: iter([("fake", fake)]))
    assert cli.main(["fake", "x.nc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["symgrad fake: error: the file x.nc is missing; run 'symgrad generate' first"]


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "symgrad", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: symgrad" in out.stdout


def test_every_command_module_is_registered():
    # A module added to symgrad/commands/ but missing from cli.SUBCOMMANDS (or a name there
    # without its module) would be a command nobody can run.
    modules = _command_modules()
    parsers = _subparsers()
    assert set(parsers) == set(modules)
    for name, module in modules.items():
        assert parsers[name].description == getattr(module, "DESCRIPTION", module.HELP)
    # docs/design.md section 7: the command's interface, plus merge (the sweep's step that stacks
    # results) and report (the study's figures, tables and provenance in one document).
    assert set(parsers) == {"generate", "solve", "train", "equivariance", "overlap", "spectrum", "merge", "figures",
                            "report", "sweep", "info", "export"}


def test_diagnostic_commands_offer_exactly_the_groups_that_can_be_built(capsys):
    # The CLI spells the names out (so --help need not import jax); every name it offers must
    # build a group of that name, and the diagnostics must offer the same names.
    import jax.numpy as jnp

    from symgrad import groups

    offered = {name: next(a.choices for a in p._actions if a.dest == "group")
               for name, p in _subparsers().items() if any(a.dest == "group" for a in p._actions)}
    assert {"equivariance", "overlap"} <= set(offered)
    choices = offered["equivariance"]
    assert choices and all(list(c) == list(choices) for c in offered.values()), offered
    q = jnp.ones((1, 8, 8, 4))
    for name in choices:
        group = groups.named_group(name, 8, time_step=0.125)  # boosts need the data's time step
        assert group.name == name and len(group.elements) >= 2
        assert group.act(group.elements[1], q).shape == q.shape
    # And no more: the group modules' own constructors name exactly these groups.
    built = {groups.d4_group().name, groups.translations(8, "x").name, groups.translations(8, "y").name,
             groups.scalings().name, groups.boosts(8, 0.125, "x").name, groups.boosts(8, 0.125, "y").name}
    assert built == set(choices)
    with pytest.raises(SymgradError, match="unknown group"):
        groups.named_group("d8", 8)
    with pytest.raises(SystemExit):
        cli.main(["equivariance", "--help"])
    assert "{" + ",".join(choices) + "}" in capsys.readouterr().out
