"""Files: atomic writes (netCDF, JSON, npz, text), attribute encoding, partial-directory
naming, provenance and locks (docs/design.md section 6). Every writer in symgrad goes through
here, so a file that exists is complete."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import shutil
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


_COMMAND: list[str] = []  # the subcommand being run (symgrad.cli.main sets it)


@contextlib.contextmanager
def running_command(argv):
    """Within this block, provenance names ``symgrad ARGV...`` as the command, not the process
    (the demo and the tests run subcommands in one process)."""
    _COMMAND.append(" ".join(["symgrad", *map(str, argv)]))
    try:
        yield
    finally:
        _COMMAND.pop()


def encode_attr(value):
    """A netCDF-safe attribute value: str, int and float kept, bool as 0/1, anything else
    (lists, dicts, None) as JSON text. :func:`decode_attr` reverses it."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    return json.dumps(value, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def decode_attr(value, default=None):
    """An attribute written by :func:`encode_attr`: JSON text decoded, other values as they
    are, ``default`` when missing."""
    if value is None:
        return default
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def partial_dir(out: str | os.PathLike) -> Path:
    """Where an unfinished run writing ``out`` keeps its finished parts: ``OUT.partial/``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _command() -> str:
    return _COMMAND[-1] if _COMMAND else " ".join(sys.argv)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def history(created: str | None = None) -> str:
    """CF's ``history`` attribute of a file: the time it was created (default: now) and the
    command line that wrote it."""
    return f"{created or _now()} {_command()}"


def provenance(config: dict | None = None, **extra) -> dict:
    """Provenance attributes for a result or data file (netCDF-safe, :func:`encode_attr`),
    ``history`` (:func:`history`) among them."""
    created = _now()
    attrs = {
        "created": created,
        "history": history(created),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "command": _command(),
        "git_commit": git_commit(),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
    }
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    attrs.update({key: encode_attr(value) for key, value in extra.items()})
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


# What a failed write means to the user, by errno: the one place these words live.
_WRITE_ADVICE = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some of your quota or choose another location",
    errno.EACCES: "choose a location you can write to",
    errno.EPERM: "choose a location you can write to",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.EISDIR: "that path is a directory: give a file name",
    errno.ENOTDIR: "a parent of that path is a file, not a directory",
}
# A netCDF library error with less free space than this at the target reads as a full disk
# (netCDF-C reports ENOSPC as "NetCDF: HDF error", without an errno).
_NEARLY_FULL_BYTES = 1 << 20


def write_error(exc: BaseException, path: str | os.PathLike | None = None, needed: str = ""):
    """The one-line ``SymgradError`` for a write that failed with ``exc``, or None when
    ``exc`` is not a write failure (then the caller re-raises it). ``needed`` says how much
    room the write wanted, for a full disk."""
    from symgrad.errors import SymgradError

    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    target = Path(where) if where is not None else None
    code = getattr(exc, "errno", None)
    # Free space first: netCDF-C reports a full disk as an HDF error or even as EACCES.
    if target is not None or code == errno.ENOSPC:
        probe = next((p for p in (target, *target.parents) if p.exists()), None) if target is not None else None
        try:
            free = shutil.disk_usage(probe).free if probe is not None else None
        except OSError:
            free = None
        if code == errno.ENOSPC or (free is not None and free < _NEARLY_FULL_BYTES):
            space = f" ({free} bytes free{', ' + needed if needed else ''})" if free is not None else ""
            return SymgradError(f"cannot write {target or 'the output'}: {os.strerror(errno.ENOSPC)}{space}; "
                                f"{_WRITE_ADVICE[errno.ENOSPC]}")
    if isinstance(exc, OSError) and code in _WRITE_ADVICE:
        return SymgradError(f"cannot write {target or 'the output'}: {exc.strerror or os.strerror(code)}; "
                            f"{_WRITE_ADVICE[code]}")
    return None


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary sibling of ``path`` to write; on success it is fsynced and renamed
    onto ``path``. A failed write (full disk, no permission) raises the one-line
    ``SymgradError`` of ``write_error`` and leaves ``path`` as it was; the temporary file
    never stays behind."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        commit_file(tmp, path)
    except (OSError, RuntimeError) as exc:
        err = write_error(exc, path)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp.exists():
            tmp.unlink()


# A finished file that a later run reuses (a chunk of ``generate``) carries its SHA-256 in a
# sibling ``NAME.sha256``, written after the file itself: a file without it, or whose bytes no
# longer match it (a damaged disk, a hand edit, a copy cut short), is not reused.
DIGEST_SUFFIX = ".sha256"


def file_digest(path: str | os.PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def record_digest(path: str | os.PathLike) -> None:
    """Write ``path``'s SHA-256 beside it (atomically), for :func:`is_intact`."""
    path = Path(path)
    with atomic_write(path.with_name(path.name + DIGEST_SUFFIX)) as tmp:
        tmp.write_text(file_digest(path) + "\n")


def is_intact(path: str | os.PathLike) -> bool:
    """True when ``path`` exists and still has the SHA-256 that :func:`record_digest` wrote."""
    path = Path(path)
    sidecar = path.with_name(path.name + DIGEST_SUFFIX)
    try:
        return sidecar.read_text().strip() == file_digest(path)
    except OSError:  # either file missing or unreadable
        return False


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON (numpy values allowed) with ``atomic_write``."""
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")


# The CF version every netCDF file symgrad writes declares and follows (docs/data-format.md).
CONVENTIONS = "CF-1.8"
# The integer types CF-1.8 allows (byte, short, int); others are written as int.
_CF_INTEGERS = ("int8", "int16", "int32")


def cf_dataset(ds, path: str | os.PathLike = "the file"):
    """``ds`` (a shallow copy; ``ds`` itself is unchanged) as CF-1.8 lets a file hold it:
    integer variables of other types (int64, unsigned) written as int32, refused with a
    one-line ``SymgradError`` when a value does not fit; dimension coordinates without a
    ``_FillValue``; the attributes ``Conventions`` and ``history`` where ``ds`` lacks them."""
    import numpy as np

    from symgrad.errors import SymgradError

    ds = ds.copy(deep=False)
    limits = np.iinfo(np.int32)
    for name, var in ds.variables.items():
        stored = np.dtype(var.encoding.get("dtype", var.dtype))
        if stored.kind in "iu" and stored.name not in _CF_INTEGERS:
            values = np.asarray(var.values)
            if values.dtype.kind in "iu" and values.size:
                low, high = values.min(), values.max()
                if low < limits.min or high > limits.max:
                    bad = low if low < limits.min else high
                    raise SymgradError(f"cannot write {path}: variable {name!r} holds {bad}, outside the int32 "
                                       f"range that {CONVENTIONS} allows for integers")
            var.encoding["dtype"] = np.dtype(np.int32)
        if name in ds.dims:
            var.encoding["_FillValue"] = None  # CF: coordinate variables have no missing values
    ds.attrs.setdefault("Conventions", CONVENTIONS)
    ds.attrs.setdefault("history", history())
    return ds


def write_netcdf_atomic(ds, path: str | os.PathLike, **to_netcdf_kwargs) -> Path:
    """Write an ``xarray.Dataset`` to ``path`` with ``atomic_write``, as :func:`cf_dataset`
    makes it (a CF-1.8 file)."""
    ds = cf_dataset(ds, path)
    with atomic_write(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", **to_netcdf_kwargs)
    return Path(path)


class ExclusiveLock:
    """One writer per output: an advisory ``fcntl`` lock on ``path``, held while in use.

    The OS releases the lock when the process dies, so a kill -9 leaves no stale lock; the
    file itself (holding the holder's PID and host, for the message) is removed on a clean
    release. A second process gets a one-line ``SymgradError`` naming the holder. ``what``
    names the thing locked in that message ("run directory RUN_DIR").
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what, self._fd = Path(path), what, None

    def __enter__(self):
        import fcntl

        from symgrad.errors import SymgradError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            # Raw descriptors, unbuffered: nothing is left to flush (and fail) on release.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise SymgradError(f"{self.what} is in use by {holder} (lock {self.path}); wait for it to "
                                   "finish, or use another output") from None
            # A holder that released and removed the file between our open and our lock leaves
            # us locking a deleted inode: retry on the path's current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:  # who holds it, for the refusal message; the flock alone is the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:  # a full disk: the work itself will report that, with its path
            pass
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing releases the lock
            self._fd = None
        return False
