"""Atomic netCDF writing and provenance attributes (DESIGN.md section 6)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_VERSIONED_PACKAGES = (
    "symgrad", "jax", "jaxlib", "flax", "optax", "lineax", "orbax-checkpoint",
    "numpy", "xarray", "netCDF4",
)


def git_commit() -> str:
    """The commit of the symgrad source tree, with ``-dirty`` if it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(config: dict | None = None, **extra) -> dict[str, str]:
    """netCDF-safe (string-valued) provenance attributes for a result or data file."""
    attrs = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
        "git_commit": git_commit(),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
    }
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return attrs


def atomic_path(path: str | os.PathLike) -> Path:
    """A temporary sibling of ``path`` (same filesystem, so ``os.replace`` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync ``tmp`` and rename it onto ``path``: readers see the old file or the new one."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_netcdf_atomic(ds, path: str | os.PathLike, **to_netcdf_kwargs) -> Path:
    """Write an ``xarray.Dataset`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        ds.to_netcdf(tmp, engine="netcdf4", **to_netcdf_kwargs)
        commit_file(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
