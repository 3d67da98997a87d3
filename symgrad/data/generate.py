"""Chunked, resumable generation of trajectory files (``symgrad generate`` and ``symgrad solve``).

A run writing ``OUT.nc`` keeps its finished chunks in ``OUT.nc.partial/``:

* ``spec.json``: every argument that determines the file's contents;
* ``chunk_00000.nc``, ...: trajectories ``[k*K, min((k+1)*K, N))``, each a complete data
  file written atomically (temporary file + rename), so a chunk either exists whole or not,
  and ``chunk_00000.nc.sha256`` beside it (``symgrad.io.record_digest``). A rerun reuses only
  chunks whose bytes still match; a damaged or unverified one is said so and recomputed;
* ``lock``: an ``flock`` held while a process works in the directory (``symgrad.io.ExclusiveLock``).

A killed run leaves the finished chunks; re-running the same command skips them, computes
the rest and finally streams all chunks into ``OUT.nc`` (again through a temporary file and
a rename) and deletes the directory. Different arguments against an existing ``.partial``
directory are an error (delete the directory to start over). ``OUT.nc`` itself appears
only when complete.

Initial conditions: trajectory ``i`` starts from
``sample_initial(family, fold_in(key(seed), i), 1, ...)``, so it depends on ``seed`` and
``i`` only -- not on the chunk size, nor on which process computed it.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from symgrad.data import schema
from symgrad.data.writer import DatasetWriter, write_dataset
from symgrad.errors import SymgradError
from symgrad.io import DIGEST_SUFFIX, ExclusiveLock, is_intact, partial_dir, record_digest, write_json_atomic
from symgrad.names import FAMILIES, GENERATE_CHUNK_SIZE, ON_FAILURE

_MAX_SEED = 2**63 - 1  # as symgrad.train.config.MAX_SEED: numpy and jax.random take 0..int64 max
MAX_RESAMPLE_ATTEMPTS = 5


class OutputExistsError(SymgradError):
    """``out`` exists and holds another run; the caller may write elsewhere or overwrite it."""

    def __init__(self, out):
        self.out = Path(out)
        super().__init__(f"{out} exists and was not made by these arguments; write elsewhere, delete it, "
                         "or set overwrite")


def _jsonable(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class _Job:
    """What a chunked run computes: ``spec`` (compared on resume) and how to get initial states."""

    spec: dict
    n_trajectories: int
    times: np.ndarray
    resolution: tuple[int, int]
    gamma: float
    chunk_size: int
    euler_config: object
    float64: bool
    initial: Callable[[int, int], object]  # (start, stop) -> q0 (stop-start, nx, ny, 4)
    resample: Callable[[np.ndarray, int], object] | None  # (trajectories, attempt) -> q0
    attrs: dict


def _check_spec(partial: Path, spec: dict) -> None:
    spec_file = partial / "spec.json"
    if spec_file.exists():
        try:
            old = json.loads(spec_file.read_text())
        except ValueError:
            old = None
        if old != spec:
            diff = sorted(k for k in set(spec) | set(old or {}) if (old or {}).get(k) != spec.get(k))
            detail = "; ".join(f"{k}: {(old or {}).get(k)!r} there, {spec.get(k)!r} now" for k in diff[:6])
            raise SymgradError(
                f"{partial} holds an unfinished run with different arguments ({detail}). Re-run with the "
                f"original arguments to resume it, or delete {partial} to start over"
            )
    else:
        write_json_atomic(spec_file, spec)


def _existing_output_matches(out: Path, spec: dict) -> bool:
    from symgrad.data.reader import open_dataset

    try:
        with open_dataset(out) as dataset:  # shares the handle of a reader holding ``out`` open
            stored = dataset.attrs[0].get("generation_spec")
    except SymgradError:
        return False
    try:
        return stored is not None and json.loads(stored) == spec
    except (TypeError, ValueError):
        return False


def _solve_chunk(job: _Job, start: int, stop: int):
    """States ``(stop-start, t, nx, ny, 4)`` and the list of ``[trajectory, attempts]`` resampled."""
    import jax
    import jax.numpy as jnp

    from symgrad.euler import describe_failures, solve

    n = stop - start
    with jax.enable_x64(job.float64):
        dtype = jnp.float64 if job.float64 else jnp.float32
        q0 = jnp.asarray(job.initial(start, stop), dtype=dtype)
        # Pad the last chunk to the chunk size: one compiled program for every chunk.
        pad = job.chunk_size - n
        if pad > 0:
            q0 = jnp.concatenate([q0, jnp.broadcast_to(q0[:1], (pad, *q0.shape[1:]))], axis=0)
        times = jnp.asarray(job.times, dtype=dtype)
        result = solve(q0, times, job.euler_config)
        states = np.array(result.states[:n])
        ok = np.array(result.ok[:n])
        lines = describe_failures(result, np.arange(start, stop))
        resampled: dict[int, int] = {}
        attempt = 0
        while not ok.all():
            failed = np.flatnonzero(~ok)
            if job.resample is None or attempt >= MAX_RESAMPLE_ATTEMPTS:
                more = f" (after {attempt} resampling attempts)" if attempt else ""
                # Failing at t = 0 means the initial states themselves are not physical:
                # solver settings cannot help there.
                at_start = bool(np.all(np.asarray(result.failure.time)[~np.asarray(result.ok)] == 0))
                if not at_start:
                    advice = ("Try a smaller cfl, limiter 'minmod', reconstruction 'characteristic' "
                              "(the Euler settings) or float64")
                elif job.spec.get("kind") == "generate":  # sampled states: the sampler is at fault
                    advice = "The sampled initial states are not physical: please report this with the arguments"
                else:
                    advice = "The initial states are not physical: fix them"
                raise SymgradError(
                    f"the Euler solver failed on {failed.size} trajectories{more}: " + "; ".join(lines[:5])
                    + ("; ..." if len(lines) > 5 else "")
                    + f". Nothing was written for this chunk (finished chunks are kept). {advice}"
                    + (", or on_failure='resample' to replace failed initial states with fresh draws"
                       if job.resample is None and job.spec.get("kind") == "generate" else "")
                )
            attempt += 1
            trajectories = start + failed
            q_new = jnp.asarray(job.resample(trajectories, attempt), dtype=dtype)
            result = solve(q_new, times, job.euler_config)
            new_ok = np.asarray(result.ok)
            states[failed] = np.asarray(result.states)
            for t in trajectories:
                resampled[int(t)] = attempt
            ok[failed] = new_ok
            lines = describe_failures(result, trajectories)
    return states, sorted([k, v] for k, v in resampled.items())


def _run(job: _Job, out, *, overwrite: bool = False, progress: bool = True, stop_after_chunks: int | None = None):
    """Compute missing chunks, then assemble ``out``. Returns ``out`` or None if stopped early."""
    out = Path(out)
    spec = _jsonable(job.spec)
    # Checked before any work: --overwrite cannot replace a directory, and a data file
    # cannot be written below a file.
    if out.is_dir():
        raise SymgradError(f"the output {out} is a directory; give a file name, such as {out / 'data.nc'}")
    blocking = next((p for p in out.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise SymgradError(f"cannot write {out}: {blocking} is a file, not a directory; choose another output")
    if out.exists() and not overwrite:
        if _existing_output_matches(out, spec):
            # killed between the final rename and the clean-up: only the clean-up is left
            shutil.rmtree(partial_dir(out), ignore_errors=True)
            return out
        raise OutputExistsError(out)
    partial = partial_dir(out)
    partial.mkdir(parents=True, exist_ok=True)
    with ExclusiveLock(partial / "lock", f"the output {out}"):
        _check_spec(partial, spec)
        # Temporary files of a killed run (we hold the lock, so nobody else is writing them).
        for stale in [*partial.glob(".chunk_*.nc.tmp-*"), *out.parent.glob(f".{out.name}.tmp-*")]:
            stale.unlink(missing_ok=True)
        n, k = job.n_trajectories, job.chunk_size
        n_chunks = math.ceil(n / k)
        bounds = [(c * k, min((c + 1) * k, n)) for c in range(n_chunks)]
        paths = [partial / f"chunk_{c:05d}.nc" for c in range(n_chunks)]
        done = [is_intact(p) for p in paths]
        damaged = [p for p, d in zip(paths, done) if not d and p.exists()]
        for path in damaged:
            print(f"symgrad: {path} is damaged or was never verified (its SHA-256 in {path.name}{DIGEST_SUFFIX} "
                  "does not match, or is missing); computing it again", file=sys.stderr)
            path.unlink()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n, initial=sum(b - a for (a, b), d in zip(bounds, done) if d), unit="traj",
            desc=f"{out.name}", disable=not progress, dynamic_ncols=True,
        )
        written = 0
        with bar:
            for c, ((a, b), path) in enumerate(zip(bounds, paths)):
                if done[c]:
                    continue
                if stop_after_chunks is not None and written >= stop_after_chunks:
                    return None
                states, resampled = _solve_chunk(job, a, b)
                write_dataset(
                    path, states, job.times, gamma=job.gamma,
                    attrs={"chunk": c, "first_sample": a, "resampled": resampled},
                )
                record_digest(path)
                written += 1
                bar.update(b - a)
        _assemble(job, spec, out, bounds, paths)
        shutil.rmtree(partial, ignore_errors=True)
        return out


def _assemble(job: _Job, spec: dict, out: Path, bounds, paths) -> None:
    import netCDF4

    from symgrad.io import provenance

    resampled = []
    for path in paths:
        with netCDF4.Dataset(path, "r") as nc:
            resampled.extend(json.loads(nc.getncattr("resampled")))
    nx, ny = job.resolution
    attrs = dict(job.attrs)
    attrs["resampled_trajectories"] = resampled
    attrs.update(provenance(config=spec))
    attrs["generation_spec"] = json.dumps(spec, sort_keys=True)
    with DatasetWriter(out, job.n_trajectories, job.times, nx, ny, gamma=job.gamma, attrs=attrs) as writer:
        for (a, b), path in zip(bounds, paths):
            with netCDF4.Dataset(path, "r") as nc:
                var = nc.variables[schema.DATA_VARIABLE]
                if var.shape[0] != b - a:
                    raise SymgradError(f"{path} holds {var.shape[0]} trajectories, expected {b - a}; delete it and re-run")
                for s in range(0, b - a, 8):  # bounded memory for big chunks
                    writer.write_channels(a + s, np.asarray(var[s:min(s + 8, b - a)]))


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------
def _euler_config(euler_config, gamma: float):
    from symgrad.euler import EulerConfig

    if euler_config is None:
        return EulerConfig(gamma=gamma)
    if isinstance(euler_config, dict):
        return EulerConfig.from_dict({"gamma": gamma, **euler_config})
    return euler_config


def _check_common(n_times: int, t_final: float, chunk_size: int) -> np.ndarray:
    if not (isinstance(n_times, (int, np.integer)) and n_times >= 1):
        raise SymgradError(f"n_times (stored times, t=0 included) must be an integer >= 1, got {n_times!r}")
    if not (math.isfinite(t_final) and (t_final > 0 or (n_times == 1 and t_final >= 0))):
        raise SymgradError(f"t_final (the last stored time) must be a finite number > 0, got {t_final!r}")
    if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
        raise SymgradError(f"chunk_size (trajectories per chunk) must be an integer >= 1, got {chunk_size!r}")
    return np.linspace(0.0, float(t_final), int(n_times))


def generate_dataset(
    out,
    family: str,
    n_trajectories: int,
    resolution: int,
    *,
    n_times: int = 21,
    t_final: float = 1.0,
    seed: int = 0,
    chunk_size: int = GENERATE_CHUNK_SIZE,
    euler_config=None,
    initial_config=None,
    gamma: float = schema.DEFAULT_GAMMA,
    float64: bool = False,
    on_failure: str = "error",
    overwrite: bool = False,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> Path | None:
    """Generate ``n_trajectories`` of ``family`` into the data file ``out`` (chunked, resumable).

    Times are ``linspace(0, t_final, n_times)``. ``euler_config``: a
    :class:`symgrad.euler.EulerConfig` or a dict of its fields (``gamma`` comes from
    ``gamma``). ``on_failure``: ``"error"`` (default: a trajectory the solver marks failed
    stops the run with its trajectory, time and cell; finished chunks are kept) or
    ``"resample"`` (replace its initial state by a fresh draw from
    ``fold_in(fold_in(key(seed), i), attempt)``, up to 5 attempts; the replaced indices are
    listed in the attribute ``resampled_trajectories``; note that this biases the data
    towards problems the solver can handle). ``stop_after_chunks`` stops after computing
    that many chunks (returns None), as a kill would -- for tests.
    Returns ``out``. If ``out`` already holds exactly this run, nothing is recomputed.
    """
    import jax

    from symgrad.euler import initial

    if family not in FAMILIES:
        raise SymgradError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if not (isinstance(n_trajectories, (int, np.integer)) and n_trajectories >= 1):
        raise SymgradError(f"n_trajectories (the number of trajectories) must be an integer >= 1, got {n_trajectories!r}")
    if not (isinstance(resolution, (int, np.integer)) and resolution >= 4):
        raise SymgradError(f"resolution (grid cells per direction) must be an integer >= 4, got {resolution!r}")
    if on_failure not in ON_FAILURE:
        raise SymgradError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed <= _MAX_SEED):
        raise SymgradError(f"seed must be an integer in 0..{_MAX_SEED}, got {seed!r}")
    times = _check_common(n_times, t_final, chunk_size)
    config = _euler_config(euler_config, gamma)
    if not math.isclose(config.gamma, gamma):
        raise SymgradError(f"solver gamma {config.gamma} differs from the data gamma {gamma}")
    ic_config = initial.default_config(family) if initial_config is None else initial_config
    res = int(resolution)

    def sample(keys):
        return jax.vmap(lambda k: initial.sample_initial(family, k, 1, res, ic_config, float(gamma))[0])(keys)

    def initial_states(start: int, stop: int):
        root = jax.random.key(int(seed))
        keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(np.arange(start, stop, dtype=np.uint32))
        return sample(keys)

    def resample_states(trajectories: np.ndarray, attempt: int):
        root = jax.random.key(int(seed))
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(root, i), attempt))(
            np.asarray(trajectories, dtype=np.uint32)
        )
        return sample(keys)

    spec = {
        "kind": "generate",
        "family": family,
        "n_trajectories": int(n_trajectories),
        "resolution": res,
        "n_times": int(n_times),
        "t_final": float(t_final),
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "gamma": float(gamma),
        "solver": config.to_dict(),
        "initial": ic_config.to_dict(),
        "float64": bool(float64),
        "on_failure": on_failure,
    }
    attrs = {
        "title": f"{family} trajectories of the 2-D compressible Euler equations",
        "family": family,
        "seed": int(seed),
        "n_trajectories": int(n_trajectories),
        "t_final": float(t_final),
        "chunk_size": int(chunk_size),
        "solver": config.to_dict(),
        **{f"solver_{k}": v for k, v in config.to_dict().items() if k != "gamma"},
        "initial_config": ic_config.to_dict(),
        "float64": bool(float64),
        "on_failure": on_failure,
    }
    job = _Job(
        spec=spec, n_trajectories=int(n_trajectories), times=times, resolution=(res, res),
        gamma=float(gamma), chunk_size=int(chunk_size), euler_config=config, float64=bool(float64),
        initial=initial_states, resample=resample_states if on_failure == "resample" else None, attrs=attrs,
    )
    return _run(job, out, overwrite=overwrite, progress=progress, stop_after_chunks=stop_after_chunks)


def solve_dataset(
    init,
    out,
    *,
    t_final: float,
    n_times: int,
    chunk_size: int = GENERATE_CHUNK_SIZE,
    euler_config=None,
    float64: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> Path | None:
    """Evolve time index 0 of every trajectory of the data file(s) ``init`` into ``out``.

    ``init`` is anything :func:`open_dataset` accepts; gamma is the file's. Chunked and
    resumable like :func:`generate_dataset`; a failed trajectory is an error naming its
    sample, time and cell (the user's initial states are not replaced).
    """
    from symgrad.data.reader import open_dataset

    dataset = open_dataset(init)
    times = _check_common(n_times, t_final, chunk_size)
    config = _euler_config(euler_config, dataset.gamma)
    if not math.isclose(config.gamma, dataset.gamma):
        raise SymgradError(f"solver gamma {config.gamma} differs from the gamma {dataset.gamma} of {init}")
    nx, ny = dataset.shape
    sources = [
        {"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "mtime": int(Path(p).stat().st_mtime)}
        for p in dataset.paths
    ]

    def initial_states(start: int, stop: int):
        return dataset.states(slice(start, stop), [0])[:, 0]

    spec = {
        "kind": "solve",
        "sources": sources,
        "n_trajectories": dataset.n_samples,
        "resolution": [nx, ny],
        "n_times": int(n_times),
        "t_final": float(t_final),
        "chunk_size": int(chunk_size),
        "gamma": dataset.gamma,
        "solver": config.to_dict(),
        "float64": bool(float64),
    }
    source_attrs = dataset.attrs[0]
    attrs = {
        "title": "trajectories of the 2-D compressible Euler equations from user-given initial states",
        "family": dataset.family,
        "initial_states_from": json.dumps([s["path"] for s in sources]),
        "n_trajectories": dataset.n_samples,
        "t_final": float(t_final),
        "chunk_size": int(chunk_size),
        "solver": config.to_dict(),
        **{f"solver_{k}": v for k, v in config.to_dict().items() if k != "gamma"},
        "float64": bool(float64),
    }
    if "seed" in source_attrs:
        attrs["seed"] = source_attrs["seed"]
    job = _Job(
        spec=spec, n_trajectories=dataset.n_samples, times=times, resolution=(nx, ny), gamma=dataset.gamma,
        chunk_size=int(chunk_size), euler_config=config, float64=bool(float64),
        initial=initial_states, resample=None, attrs=attrs,
    )
    try:
        return _run(job, out, overwrite=overwrite, progress=progress, stop_after_chunks=stop_after_chunks)
    finally:
        dataset.close()


__all__ = ["OutputExistsError", "generate_dataset", "solve_dataset"]
