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


@pytest.mark.parametrize("name", [n for n, _ in cli._commands()])
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: symgrad " + name in capsys.readouterr().out


def test_symgrad_error_becomes_one_line(monkeypatch, capsys):
    import types

    def boom(args):
        raise SymgradError(f"the file {args.path} is missing; run 'symgrad generate' first")

    fake = types.SimpleNamespace(HELP="fake", register=lambda p: p.add_argument("path"), run=boom)
    monkeypatch.setattr(cli, "_commands", lambda: iter([("fake", fake)]))
    assert cli.main(["fake", "x.nc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["symgrad fake: error: the file x.nc is missing; run 'symgrad generate' first"]


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "symgrad", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: symgrad" in out.stdout


def test_every_design_subcommand_is_registered():
    # docs/design.md section 7: the command's interface, plus merge (the sweep's step that stacks
    # results) and report (the study's figures, tables and provenance in one document).
    names = [n for n, _ in cli._commands()]
    assert names == list(cli.SUBCOMMANDS)
    assert set(names) == {"generate", "solve", "train", "equivariance", "overlap", "spectrum", "merge", "figures", "report", "sweep", "info"}


def test_diagnostic_commands_offer_every_named_group():
    # The CLI spells the names out (so --help need not import jax); they must not drift.
    from symgrad import groups
    from symgrad.commands import _diagnostic_inputs

    assert _diagnostic_inputs.GROUPS == groups.GROUP_NAMES
