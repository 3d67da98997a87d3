"""Everything the training loop needs, made once: :func:`setup` returns a :class:`Setup`.

The run directory decides between a fresh start and a resume (:func:`symgrad.train.run.prepare`);
then the data (selection, split, sigma), the model and its jitted step, the state
(restored or initialised), the evaluators and the metrics log. The loop itself is
:mod:`symgrad.train.loop`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from symgrad import preemption
from symgrad.data import TransitionSource, open_dataset, split_trajectories
from symgrad.errors import SettingError, SymgradError
from symgrad.io import provenance
from symgrad.loss import channel_scales
from symgrad.models import build, surrogate_apply
from symgrad.train import distributed, run
from symgrad.train.checkpoint import Checkpointer
from symgrad.train.config import TrainConfig
from symgrad.train.evaluate import CoefficientSpread, PersistenceBaseline, RolloutSMSE, ValidationSMSE
from symgrad.train.metrics import MetricsLog, read_history
from symgrad.train.state import TrainState, abstract_state
from symgrad.train.step import (
    batch_sharding, learning_rate_schedule, make_eval_fns, make_mesh, make_optimizer, make_train_step,
    relaxation_penalty, replicated_sharding,
)

_SIGMA_DIRECT_LIMIT = 1 << 26  # target values loaded at once for sigma; above: chunked
NEW_EPOCH = {"epoch_loss_sum": 0.0, "epoch_loss_count": 0}  # the checkpoint's "extra" at an epoch start


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The data of a run: the selected trajectories split, the selected times, and the
    transitions of the training and validation trajectories."""

    dataset: Any  # symgrad.data.open_dataset of config.data
    split: dict[str, np.ndarray]  # "train"/"val"/"test": trajectory indices into the dataset
    times: np.ndarray  # the selected time indices
    train: TransitionSource
    val: TransitionSource | None  # None without validation trajectories
    digests: dict[str, str]  # SHA-256 of each data file (run.RunInfo.data_digests)
    split_source: str = run.SPLIT_RANDOM  # run.RunInfo.split_source


@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`setup` made: the loop reads its fields and never reassigns them (the
    metrics log and the checkpointer do their own bookkeeping)."""

    config: TrainConfig  # with resolved data paths
    run_dir: Path
    primary: bool  # the process that writes the run directory and logs
    resumed: bool
    data: TrainingData
    info: run.RunInfo
    steps_per_epoch: int
    total_steps: int  # epochs x steps_per_epoch
    last_step: int  # where this call stops: total_steps, or max_steps before it
    state: TrainState  # restored or initialised, replicated over the mesh
    extra: dict  # the checkpoint's "extra": the running loss sums of the epoch
    step_fn: Callable  # (state, x, y) -> (state, metrics), symgrad.train.step.make_train_step
    data_sharding: Any  # of a global batch over the mesh
    checkpointer: Checkpointer
    evaluators: dict[str, Any]  # key of the epoch record -> an evaluator (symgrad.train.evaluate)
    baseline: tuple[float, list[float]]  # PersistenceBaseline (NaN, [] off the primary process)
    metrics: MetricsLog

    @property
    def start_step(self) -> int:
        return int(distributed.fetch(self.state.step))

    def close(self) -> None:
        self.checkpointer.close()
        self.metrics.close()


def setup(config: TrainConfig, run_dir: Path, *, resume: bool | None = None, force: bool = False,
          overwrite: bool = False, log=print) -> Setup:
    """Prepare ``run_dir`` for training (see :func:`symgrad.train.loop.train` for the arguments)
    and make what the loop needs. On the primary process the run's ``config.json`` and
    ``run.json`` are written (and ``status.json`` says "running" again on a resume)."""
    config = _resolve_paths(config)
    primary = distributed.is_primary()
    stored = run.prepare(run_dir, config, resume, force, overwrite, primary)
    _stop_point()
    data = select_data(config, stored)
    _stop_point()
    sigma = np.asarray(stored.sigma) if stored is not None else training_sigma(data.train)
    _stop_point()
    steps_per_epoch = _steps_per_epoch(config.batch_size, len(data.train))
    total_steps = config.epochs * steps_per_epoch
    resolution = _square_resolution(data.dataset.resolution)
    model = build(config.model, config.preset, resolution, **config.model_overrides)
    optimizer = make_optimizer(config, steps_per_epoch)
    apply_fn = surrogate_apply(model.apply, sigma)
    mesh = make_mesh()
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    if stored is not None:
        state, extra = checkpointer.restore(abstract_state(model, optimizer, replicated_sharding(mesh)))
    else:
        state, extra = initial_state(model, optimizer, replicated_sharding(mesh), config.seed), dict(NEW_EPOCH)
    step = int(distributed.fetch(state.step))
    if stored is not None:
        epoch, position = divmod(step, steps_per_epoch)
        log(f"resuming {run_dir} at step {step} (epoch {epoch + 1}, batch {position})")
    info = run.RunInfo(
        sigma=tuple(float(s) for s in sigma), split=data.split, n_samples=int(data.dataset.n_samples),
        n_times=int(data.dataset.n_times), time_indices=tuple(int(t) for t in data.times),
        first_trajectories=int(config.first_trajectories), resolution=resolution,
        data_paths=tuple(config.data), model={"name": config.model, "preset": config.preset, "config": model.config},
        n_train_transitions=len(data.train), steps_per_epoch=steps_per_epoch, weight_decay=config.weight_decay,
        n_devices=jax.device_count(), n_processes=jax.process_count(), data_digests=data.digests,
        split_source=data.split_source)
    _stop_point()  # the last one before the run directory is written
    if primary:
        _record_start(run_dir, config, info, step if stored is not None else None)
    evaluators, baseline = _evaluators(config, data, sigma, apply_fn, mesh, primary)
    history = read_history(run_dir, step // steps_per_epoch, log=log if primary else None) if stored is not None else []
    attrs = provenance(config.to_dict(), run_dir=str(run_dir)) if primary else {}
    metrics = MetricsLog(run_dir, history, attrs, np.arange(1, data.times.size), baseline,
                         learning_rate_schedule(config, steps_per_epoch), primary)
    return Setup(
        config=config, run_dir=run_dir, primary=primary, resumed=stored is not None, data=data, info=info,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        last_step=min(total_steps, config.max_steps) if config.max_steps else total_steps,
        state=state, extra=extra, step_fn=make_train_step(apply_fn, optimizer, sigma, mesh,
                                                                relaxation_penalty(config)),
        data_sharding=batch_sharding(mesh), checkpointer=checkpointer, evaluators=evaluators,
        baseline=baseline, metrics=metrics)


# --------------------------------------------------------------------------------------
# the parts


def _stop_point() -> None:
    """A safe point of the start-up: SIGTERM (on any process) stops here, before the run
    directory is written, as :class:`symgrad.preemption.Preempted`."""
    if distributed.any_process(preemption.requested()):
        raise preemption.Preempted("stopped on SIGTERM during the start-up")


def training_sigma(source) -> np.ndarray:
    """SMSE scales from all training targets (``symgrad.loss.channel_scales``).

    Small sets are passed whole; large ones are reduced chunk by chunk in float64 to the
    per-channel RMS, which ``channel_scales`` then turns into the shared-momentum scales.
    """
    n = len(source)
    _, y0 = source.get(np.arange(min(n, 1)))
    per_item = int(np.prod(y0.shape[1:]))
    if n * per_item <= _SIGMA_DIRECT_LIMIT:
        return channel_scales(source.get(np.arange(n))[1])
    chunk = max(1, _SIGMA_DIRECT_LIMIT // (4 * per_item))
    sum_sq = np.zeros(4)
    count = 0
    for start in range(0, n, chunk):
        _, y = source.get(np.arange(start, min(n, start + chunk)))
        y = np.asarray(y, dtype=np.float64).reshape(-1, 4)
        sum_sq += np.sum(y**2, axis=0)
        count += y.shape[0]
    return channel_scales(np.sqrt(sum_sq / count)[None, :])


def select_data(config: TrainConfig, stored: run.RunInfo | None) -> TrainingData:
    """The run's data: the split stored on the first start (drawn over the selected
    trajectories, as dataset indices), the selected times and their transitions."""
    from symgrad.data.cache import open_cache
    from symgrad.data.transitions import first_of_each

    dataset = open_dataset(list(config.data), coarsen=config.coarsen)
    files = ", ".join(map(str, dataset.paths)).replace("{", "{{").replace("}", "}}")
    if dataset.n_samples == 0:
        raise SettingError(f"the data ({files}) hold no trajectories; pass files that hold some as {{data}}")
    if dataset.n_times < 2:
        raise SettingError(f"the data ({files}) hold {dataset.n_times} time per trajectory; training needs at least "
                           "2 (one transition): pass as {data} data generated with more times")
    if stored is not None:
        now = run.data_digests(dataset.paths)  # each file read once
        changed = run.changed_data(stored.data_digests, now)
        if changed:
            raise SettingError(
                changed.replace("{", "{{").replace("}", "}}") + "; a resumed run must read the data it started "
                "with: restore that file, or train on the new data into a new {run_dir} (or the same one with "
                "{overwrite})")
        digests = dict(stored.data_digests) or now
        if stored.n_samples != dataset.n_samples:
            raise SettingError(
                f"the data now hold {dataset.n_samples} trajectories but the run was trained on "
                f"{stored.n_samples}; give the same {{data}} files to resume")
        split, split_source = stored.split, stored.split_source
    else:
        split, split_source = well_split(config.data, dataset, config.first_trajectories)
        if split is None:
            selected = first_of_each(_entry_counts(config.data, dataset), config.first_trajectories)
            split = {k: selected[v] for k, v in
                     split_trajectories(selected.size, config.seed, config.split_fractions).items()}
        digests = run.data_digests(dataset.paths)
    if len(split["train"]) == 0 and split_source == run.SPLIT_WELL:
        raise SettingError("The Well's split root in {data} has no train/ directory of trajectories; download its "
                           "train split "
                           "(the-well-download --split train) or pass files to split at random as {data}")
    if len(split["train"]) == 0:
        raise SettingError(f"no training trajectories: {{split_fractions}} {list(config.split_fractions)} of "
                           f"{sum(len(v) for v in split.values())} selected trajectories leave none for training; "
                           "use more trajectories or a larger training fraction")
    times = np.asarray(config.time_indices or range(dataset.n_times), dtype=np.int64)
    if times[-1] >= dataset.n_times:
        raise SymgradError(f"time_indices go up to {int(times[-1])} but the data hold {dataset.n_times} times "
                           f"(0..{dataset.n_times - 1}); choose indices in that range")
    time_pairs = np.stack([times[:-1], times[1:]], axis=1)
    progress = config.progress and distributed.is_primary()
    states = open_cache(dataset, config.data_cache, progress=progress) if config.data_cache else None
    train_src = TransitionSource(dataset, split["train"], time_pairs, cache=states)
    val_src = TransitionSource(dataset, split["val"], time_pairs, cache=states) if len(split["val"]) else None
    return TrainingData(dataset, split, times, train_src, val_src, digests, split_source)


def well_split(entries, dataset, first_trajectories: int):
    """The Well's own split when every ``data`` entry is its split root (``train/``,
    ``valid/``, ``test/``): ``({"train", "val", "test"}: dataset indices, SPLIT_WELL)``, the
    first ``first_trajectories`` of each split directory of each entry (all where 0);
    ``(None, SPLIT_RANDOM)`` when no entry is one."""
    from symgrad.data.well import split_files

    parts = [split_files(entry) for entry in entries]
    if all(p is None for p in parts):
        return None, run.SPLIT_RANDOM
    if any(p is None for p in parts):
        root = str(next(e for e, p in zip(entries, parts) if p is not None)).replace("{", "{{").replace("}", "}}")
        raise SettingError(
            f"{{data}} mixes The Well's split root {root} (its directories are the split) with files to be split "
            "at random; pass only split roots, or only files")
    per_file = iter(dataset.sample_counts)
    split = {"train": [], "val": [], "test": []}
    offset = 0
    for entry in parts:
        for name, files in entry.items():
            n = sum(next(per_file) for _ in files)
            take = n if not first_trajectories else min(n, first_trajectories)
            split[name].extend(range(offset, offset + take))
            offset += n
    return {k: np.asarray(v, dtype=np.int64) for k, v in split.items()}, run.SPLIT_WELL


def initial_state(model, optimizer, sharding, seed: int) -> TrainState:
    """A fresh state, replicated with ``sharding``. Every process initialises on its first
    local device (same key, same values) and the host copy is replicated over the global
    mesh: the initialisation program is the same for any device count (so it is compiled
    once and cached)."""
    init_key, state_key = jax.random.split(jax.random.key(seed))
    with jax.default_device(jax.local_devices()[0]):
        params = jax.jit(model.init)(init_key)
        opt_state = jax.jit(optimizer.init)(params)
    host = jax.device_get(TrainState(params, opt_state, np.zeros((), np.int32),
                                     np.asarray(jax.random.key_data(state_key))))
    return jax.tree.map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda idx: np.asarray(a)[idx]), host)


def _evaluators(config, data: TrainingData, sigma, apply_fn, mesh, primary: bool):
    """The evaluators of each epoch end, by the key of the epoch record, and the
    persistence baseline (computed on the primary process only, which records it)."""
    n_devices = jax.device_count()
    eval_batch = -(-config.eval_batch_size // n_devices) * n_devices
    n_val = min(len(data.val), config.max_val_transitions or len(data.val)) if data.val is not None else 0
    rollout_ids = data.split["val"][:config.rollout_trajectories]
    eval_one, eval_rollout = make_eval_fns(apply_fn, sigma, mesh)
    sharding = batch_sharding(mesh)
    evaluators = {
        "val_smse": ValidationSMSE(data.val, n_val, eval_batch, sharding, eval_one),
        "val_rollout_smse": RolloutSMSE(data.dataset, rollout_ids, data.times, eval_batch, sharding, eval_rollout),
    }
    if config.model == "relaxed":  # its relaxation: the coefficients' spread, and the penalty it makes
        from symgrad.models import coefficient_spread

        spread = jax.jit(coefficient_spread)
        evaluators["relaxation_spread"] = CoefficientSpread(spread, 1.0)
        evaluators["relaxation_penalty"] = CoefficientSpread(spread, config.relaxation_weight)
    baseline = (PersistenceBaseline(data.val, n_val, data.dataset, rollout_ids, data.times, sigma).evaluate()
                if primary else (float("nan"), []))
    return evaluators, baseline


def _record_start(run_dir: Path, config: TrainConfig, info: run.RunInfo, resumed_at: int | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    run.write_config(run_dir, config)
    info.write(run_dir)
    if resumed_at is not None:  # not the stale "preempted" or "failed" of the run that stopped
        run.write_status(run_dir, "running", step=resumed_at)


def _resolve_paths(config: TrainConfig) -> TrainConfig:
    if not config.data:
        raise SettingError("no training data: give {data}, one or more FILE.nc")
    paths = []
    for p in config.data:
        path = Path(p).expanduser()
        if not path.exists():
            raise SymgradError(f"data file {p} does not exist; create it with 'symgrad generate'")
        paths.append(str(path.resolve()))
    cache = str(Path(config.data_cache).expanduser().absolute()) if config.data_cache else ""
    return dataclasses.replace(config, data=tuple(paths), data_cache=cache)


def _entry_counts(entries, dataset) -> list[int]:
    """Trajectories per ``data`` entry (a file, or a directory or glob of shards), from the
    per-file counts of ``dataset``, which holds the entries' files in order."""
    from symgrad.data.schema import expand_paths

    per_file = iter(dataset.sample_counts)
    return [sum(next(per_file) for _ in expand_paths([entry])) for entry in entries]


def _square_resolution(resolution) -> int:
    r = np.atleast_1d(np.asarray(resolution)).astype(int)
    if np.any(r != r[0]):
        raise SymgradError(f"training needs a square grid, the data have {tuple(r)}")
    return int(r[0])


def _steps_per_epoch(batch: int, n_transitions: int) -> int:
    n_devices = jax.device_count()
    if batch % n_devices:
        raise SettingError(f"{{batch_size}} {batch} must be a multiple of the {n_devices} devices")
    steps = n_transitions // batch
    if steps == 0:
        raise SettingError(f"only {n_transitions} training transitions, fewer than one batch "
                           f"of {batch}; use a smaller {{batch_size}} or more data")
    return steps
