"""How fast the training loader delivers transitions at 128x128: netCDF reads vs the cache.

    python benchmarks/data.py                    # 48 trajectories x 21 times at 128x128 (~330 MB)
    python benchmarks/data.py --trajectories 96

Writes a PDEGym-layout file of physical random states once (``benchmarks/.cache``), then
times ``TransitionSource.get`` on random batches of 64 transitions, side by side in one run:

* ``netcdf``: reads through ``TrajectoryDataset`` (netCDF4/HDF5, one read per trajectory
  touched, every read checked for NaN/Inf and physics) -- today's path;
* ``cache``: the same transitions copied out of the memory-mapped ``.npy`` of
  ``symgrad.data.cache.open_cache`` (checked once, when it is converted).

Each with the page cache warm (the file read once before timing) and, where this process
may drop the page cache (root, ``/proc/sys/vm/drop_caches``), cold. The conversion time is
recorded too. Then, end to end, the tiny UNet trained from each loader (``--train-steps``):
samples/s and the data-wait fraction from the run's TensorBoard points. Then, warm, with more workers: N threads
reading shares of each batch, and grain's ``DataLoader`` with N worker processes (if grain is
installed; it is not a dependency of symgrad). Excludes: the paper models' step rates (``benchmarks/train.py``, on a GPU). Writes
``benchmarks/records/data.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RECORD = ROOT / "records" / "data.json"
CACHE = ROOT / ".cache"
BATCH = 64


def _file(n: int, n_times: int, res: int) -> Path:
    from symgrad import data

    path = CACHE / f"data-{n}x{n_times}-{res}.nc"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rho = rng.uniform(0.5, 1.5, (n, n_times, res, res, 1))
    m = rng.uniform(-0.3, 0.3, (n, n_times, res, res, 2))
    p = rng.uniform(0.5, 1.5, (n, n_times, res, res, 1))
    e = p / 0.4 + 0.5 * np.sum(m**2, axis=-1, keepdims=True) / rho
    q = np.concatenate([rho, m, e], axis=-1).astype(np.float32)
    return data.write_dataset(path, q, np.linspace(0.0, 1.0, n_times), gamma=1.4)


def _drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _rate(source, batches: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for idx in batches:
        source.get(idx)
    return len(batches) * BATCH / (time.perf_counter() - t0)


def _threaded_rate(source, batches: list[np.ndarray], workers: int) -> float:
    """``workers`` threads, each reading its share of every batch (what the loop's prefetch
    thread would do with a pool): netCDF reads serialise on netCDF-C's lock, copies may not."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        for idx in batches:
            list(pool.map(source.get, np.array_split(idx, workers)))
        return len(batches) * BATCH / (time.perf_counter() - t0)


class _GrainSource:
    """Transition ``k`` of a file, for grain's worker processes: each opens its own handle."""

    def __init__(self, path: Path, cache_path: Path | None, n: int):
        self.path, self.cache_path, self.n, self._source = path, cache_path, n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):
        if self._source is None:
            from symgrad.data import TransitionSource, open_dataset

            dataset = open_dataset(self.path)
            cache = np.load(self.cache_path, mmap_mode="r") if self.cache_path else None
            self._source = TransitionSource(dataset, np.arange(dataset.n_samples), cache=cache)
        x, y = self._source.get([int(k)])
        return x[0], y[0]


def _grain_rate(path: Path, cache_path: Path | None, n: int, n_batches: int, workers: int) -> float | None:
    """grain's DataLoader with ``workers`` processes (0: in this process), shuffled, batched
    by grain; the first batch (worker start-up) is not timed."""
    try:
        import grain.python as pygrain
        from absl import flags
    except ImportError:
        return None
    if not flags.FLAGS.is_parsed():  # grain reads absl flags, which only an absl app parses
        flags.FLAGS.mark_as_parsed()
    sampler = pygrain.IndexSampler(num_records=n, shard_options=pygrain.NoSharding(), shuffle=True,
                                   num_epochs=-(-(n_batches + 1) * BATCH // n) + 1, seed=0)
    loader = pygrain.DataLoader(data_source=_GrainSource(path, cache_path, n), sampler=sampler,
                                operations=[pygrain.Batch(BATCH, drop_remainder=True)], worker_count=workers)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    rate = n_batches * BATCH / (time.perf_counter() - t0)
    del it
    return rate


def _end_to_end(path: Path, cache_dir: Path, steps: int) -> dict:
    """Training samples/s and data-wait fraction of the tiny UNet, from the files and from the
    cache, out of the run's own TensorBoard points (the first window, compilation, dropped)."""
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from symgrad.train import TrainConfig, train

    out = {}
    for name, cache in (("netcdf", ""), ("cache", str(cache_dir))):
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig(model="unet", preset="tiny", data=(str(path),), epochs=3, batch_size=BATCH,
                                 max_steps=2 * steps, log_every=steps, data_cache=cache, progress=False,
                                 rollout_trajectories=0, max_val_transitions=BATCH, checkpoint_every=10**6)
            train(config, Path(tmp) / "run", log=lambda *a: None)
            events = EventAccumulator(str(Path(tmp) / "run" / "tensorboard"))
            events.Reload()
            rate, wait = (events.Scalars(f"train/{t}")[-1].value for t in ("samples_per_second", "data_wait_fraction"))
        out[name] = {"samples_per_second": rate, "data_wait_fraction": wait}
        print(f"train {name:7s} {rate:,.1f} samples/s, data-wait fraction {wait:.3f} (tiny UNet, CPU, {steps} steps)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=48)
    parser.add_argument("--times", type=int, default=21)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches of 64 per variant")
    parser.add_argument("--train-steps", type=int, default=10,
                        help="timed training steps end to end per loader (0: skip)")
    args = parser.parse_args()

    from symgrad.data import TransitionSource, open_dataset
    from symgrad.data.cache import cache_key, open_cache
    from symgrad.io import provenance

    path = _file(args.trajectories, args.times, args.resolution)
    dataset = open_dataset(path)
    cache_dir = CACHE / "states"
    for old in cache_dir.glob("*.npy"):
        old.unlink()
    t0 = time.perf_counter()
    states = open_cache(dataset, cache_dir)
    convert_seconds = time.perf_counter() - t0
    trajectories = np.arange(dataset.n_samples)
    cache_path = cache_dir / f"{cache_key(dataset)}.npy"
    del states
    # Fresh objects for every measurement: a memory map keeps its pages mapped (dropping the
    # page cache would not evict them), and a fresh netCDF handle has nothing cached.
    make = {"netcdf": lambda: TransitionSource(open_dataset(path), trajectories),
            "cache": lambda: TransitionSource(dataset, trajectories, cache=np.load(cache_path, mmap_mode="r"))}
    rng = np.random.default_rng(1)
    n = len(make["netcdf"]())
    batches = [rng.choice(n, BATCH, replace=False) for _ in range(args.batches)]
    (x0, y0), (x1, y1) = make["netcdf"]().get(batches[0]), make["cache"]().get(batches[0])
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1), "the cache must return the same transitions"

    results = {}
    for name, build in make.items():
        source = build()
        _rate(source, batches)  # one pass to bring every page in
        results[f"{name}_warm_transitions_per_second"] = _rate(source, batches)
        del source
        gc.collect()
        if _drop_page_cache():
            results[f"{name}_cold_transitions_per_second"] = _rate(build(), batches)
        print(f"{name:7s} " + ", ".join(f"{k.split('_', 1)[1].split('_transitions')[0]} {v:,.0f}/s"
                                        for k, v in results.items() if k.startswith(name)))
    # More workers (page cache warm): threads over the batch, and grain's worker processes.
    workers = sorted({1, os.cpu_count() or 1})
    parallel = {}
    for name, build in make.items():
        source = build()
        _rate(source, batches)
        for w in workers:
            parallel[f"{name}_threads_{w}"] = _threaded_rate(source, batches, w)
            rate = _grain_rate(path, cache_path if name == "cache" else None, n, args.batches, w)
            if rate is not None:
                parallel[f"{name}_grain_workers_{w}"] = rate
        print(f"{name:7s} " + ", ".join(f"{k.split('_', 1)[1]} {v:,.0f}/s"
                                        for k, v in parallel.items() if k.startswith(name)))
    results["parallel_warm_transitions_per_second"] = parallel
    nbytes = int(np.prod((dataset.n_samples, dataset.n_times, *dataset.shape, 4))) * 4
    warm = results["cache_warm_transitions_per_second"] / results["netcdf_warm_transitions_per_second"]
    print(f"cache / netcdf (warm): {warm:.1f}x; conversion {convert_seconds:.1f} s "
          f"({nbytes / 2**20:.0f} MiB)")
    record = {
        "benchmark": "data", "trajectories": dataset.n_samples, "times": dataset.n_times,
        "resolution": args.resolution, "batch": BATCH, "batches": args.batches,
        "cache_conversion_seconds": convert_seconds, "cache_bytes": nbytes,
        **results, "cache_over_netcdf_warm": warm, "cpu_count": os.cpu_count(),
        "note": ("random batches of 64 one-step transitions by TransitionSource.get in one thread; "
                 "excludes the training step; cold = after dropping the page cache; parallel: N threads "
                 "reading shares of each batch, or grain's DataLoader with N worker processes, warm"),
        **provenance(),
    }
    if args.train_steps:
        record["end_to_end"] = _end_to_end(path, cache_dir, args.train_steps)
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    main()
