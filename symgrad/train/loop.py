"""The training loop: one flat loop over global steps (as in big_vision's ``train.py``).

Where the data stand follows from the step alone (``epoch, position = divmod(step,
steps_per_epoch)``); small "is it time to ..." helpers decide when to evaluate, checkpoint
and log. The math is in :mod:`symgrad.train.step`, the run directory in
:mod:`symgrad.train.run`, the checkpoints in :mod:`symgrad.train.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from symgrad import preemption
from symgrad.data import TransitionSource, open_dataset, split_trajectories
from symgrad.errors import SymgradError
from symgrad.io import ExclusiveLock, provenance
from symgrad.loss import channel_scales
from symgrad.models import build, surrogate_apply
from symgrad.train import distributed, run
from symgrad.train.checkpoint import Checkpointer
from symgrad.train.config import TrainConfig
from symgrad.train.state import TrainState, abstract_state, batch_indices
from symgrad.train.step import (
    batch_sharding, learning_rate_schedule, make_eval_fns, make_mesh, make_optimizer, make_train_step,
    replicated_sharding,
)

_SIGMA_DIRECT_LIMIT = 1 << 26  # target values loaded at once for sigma; above: chunked
_NEW_EPOCH = {"epoch_loss_sum": 0.0, "epoch_loss_count": 0}  # the checkpoint's "extra" at an epoch start


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a call of :func:`train` ended: ``status`` is ``finished``, ``max_steps`` or
    ``preempted`` (SIGTERM); non-finite values raise instead."""

    status: str
    step: int
    epoch: int
    run_dir: Path
    final_train_smse: float | None
    state: TrainState | None = None


# --------------------------------------------------------------------------------------
# helpers


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


def _resolve_paths(config: TrainConfig) -> TrainConfig:
    if not config.data:
        raise SymgradError("no training data: give --data FILE.nc [FILE.nc ...] (or 'data' in the config)")
    paths = []
    for p in config.data:
        path = Path(p).expanduser()
        if not path.exists():
            raise SymgradError(f"data file {p} does not exist; create it with 'symgrad generate'")
        paths.append(str(path.resolve()))
    cache = str(Path(config.data_cache).expanduser().absolute()) if config.data_cache else ""
    return dataclasses.replace(config, data=tuple(paths), data_cache=cache)


def _entry_counts(entries, dataset) -> list[int]:
    """Trajectories per ``--data`` entry (a file, or a directory or glob of shards), from the
    per-file counts of ``dataset``, which holds the entries' files in order."""
    from symgrad.data.schema import expand_paths

    per_file = iter(dataset.sample_counts)
    return [sum(next(per_file) for _ in expand_paths([entry])) for entry in entries]


def _square_resolution(resolution) -> int:
    r = np.atleast_1d(np.asarray(resolution)).astype(int)
    if np.any(r != r[0]):
        raise SymgradError(f"training needs a square grid, the data have {tuple(r)}")
    return int(r[0])


def _fetch_int(x) -> int:
    return int(distributed.fetch(x))


def _all_agree_to_stop(requested: bool) -> bool:
    """Whether any process got SIGTERM, on every process alike: the signal reaches the
    processes at different steps, and one that saved while another stepped would hang in
    their collectives."""
    if jax.process_count() == 1:
        return requested
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(requested))))


def _padded(indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    pad = size - len(indices)
    idx = np.concatenate([indices, np.repeat(indices[-1:], pad)]) if pad else indices
    mask = np.arange(size) < len(indices)
    return idx, mask


# --------------------------------------------------------------------------------------
# the loop


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool | None = None,
    force: bool = False,
    overwrite: bool = False,
    log=print,
) -> TrainResult:
    """Train (or continue) the run in ``run_dir``.

    ``resume=None``: continue if ``run_dir`` holds a checkpoint, else start; ``True``:
    require a checkpoint; ``False``: require a fresh directory. A stored config that
    differs materially is refused unless ``force``. ``overwrite`` discards an existing run.
    Raises :class:`SymgradError` on non-finite loss/gradients after checkpointing the last
    good state, or when another process trains in ``run_dir`` (one writer per run: the
    primary process holds ``LOCK_FILE`` while it trains).
    """
    run_dir = Path(run_dir).absolute()
    if not distributed.is_primary():  # one voice per run: only the primary process logs
        return _train(config, run_dir, resume=resume, force=force, overwrite=overwrite,
                      log=lambda *args, **kwargs: None)
    with ExclusiveLock(run_dir / run.LOCK_FILE, f"run directory {run_dir}"):
        return _train(config, run_dir, resume=resume, force=force, overwrite=overwrite, log=log)


def _every(step: int, n: int) -> bool:
    return n > 0 and step % n == 0


def persistence_baseline(val_src, n_val: int, dataset, rollout_ids, times, sigma) -> tuple[float, list[float]]:
    """The errors of predicting "nothing changes" (``f(x) = x``) on the validation
    transitions and rollouts that :func:`train` evaluates: ``SMSE(x, y)`` and
    ``SMSE(x_0, x_t)`` per lead time, in float64 on the host. A model whose validation
    SMSE is not below it has learnt less than the identity map."""
    sigma = np.asarray(sigma, dtype=np.float64)

    def smse(a, b):
        return np.mean(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) / sigma) ** 2, axis=(-3, -2, -1))

    val = float("nan")
    if val_src is not None and n_val:
        total = 0.0
        for start in range(0, n_val, 256):
            x, y = val_src.get(np.arange(start, min(n_val, start + 256)))
            total += float(np.sum(smse(x, y)))
        val = total / n_val
    rollout: list[float] = []
    if len(rollout_ids) and len(times) > 1:
        traj = np.asarray(dataset.states(np.asarray(rollout_ids), times))  # (B, T, nx, ny, 4)
        rollout = np.mean(smse(traj[:, :1], traj[:, 1:]), axis=0).tolist()
    return val, rollout


def _train(config: TrainConfig, run_dir: Path, *, resume, force, overwrite, log) -> TrainResult:
    from symgrad.data.cache import open_cache
    from symgrad.data.transitions import first_of_each

    config = _resolve_paths(config)
    primary = distributed.is_primary()
    stored = run.prepare(run_dir, config, resume, force, overwrite, primary)

    # -- data: the selection, the split (stored on the first start), sigma -----------------
    dataset = open_dataset(list(config.data))
    if stored is not None:
        if stored.n_samples != dataset.n_samples:
            raise SymgradError(
                f"the data now hold {dataset.n_samples} trajectories but the run was trained on "
                f"{stored.n_samples}; give the same --data files to resume")
        split = stored.split
    else:
        # The split is drawn over the selected trajectories and stored as dataset indices.
        selected = first_of_each(_entry_counts(config.data, dataset), config.first_trajectories)
        split = {k: selected[v] for k, v in
                 split_trajectories(selected.size, config.seed, config.split_fractions).items()}
    times = np.asarray(config.time_indices or range(dataset.n_times), dtype=np.int64)
    if times[-1] >= dataset.n_times:
        raise SymgradError(f"time_indices go up to {int(times[-1])} but the data hold {dataset.n_times} times "
                           f"(0..{dataset.n_times - 1}); choose indices in that range")
    time_pairs = np.stack([times[:-1], times[1:]], axis=1)
    states = open_cache(dataset, config.data_cache, progress=config.progress and primary) if config.data_cache else None
    train_src = TransitionSource(dataset, split["train"], time_pairs, cache=states)
    val_src = TransitionSource(dataset, split["val"], time_pairs, cache=states) if len(split["val"]) else None
    sigma = np.asarray(stored.sigma) if stored is not None else training_sigma(train_src)

    # -- model, optimiser, mesh and the jitted functions --------------------------------------
    n_devices = jax.device_count()
    batch = config.batch_size
    if batch % n_devices:
        raise SymgradError(f"--batch-size {batch} must be a multiple of the {n_devices} devices")
    steps_per_epoch = len(train_src) // batch
    if steps_per_epoch == 0:
        raise SymgradError(f"only {len(train_src)} training transitions, fewer than one batch "
                           f"of {batch}; use a smaller --batch-size or more data")
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    resolution = _square_resolution(dataset.resolution)
    model = build(config.model, config.preset, resolution, **config.model_overrides)
    optimizer = make_optimizer(config, steps_per_epoch)
    apply_fn = surrogate_apply(model.apply, sigma)
    mesh = make_mesh()
    repl, data_sharding = replicated_sharding(mesh), batch_sharding(mesh)
    step_fn = make_train_step(apply_fn, optimizer, sigma, mesh)
    eval_one, eval_rollout = make_eval_fns(apply_fn, sigma, mesh)
    schedule = learning_rate_schedule(config, steps_per_epoch)

    # -- the state: restored, or initialised ------------------------------------------------
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    if stored is not None:
        state, extra = checkpointer.restore(abstract_state(model, optimizer, repl))
    else:
        init_key, state_key = jax.random.split(jax.random.key(config.seed))
        # Every process initialises on its first local device (same key, same values) and
        # the host copy is replicated over the global mesh: the initialisation program is
        # the same for any device count (so it is compiled once and cached).
        with jax.default_device(jax.local_devices()[0]):
            params = jax.jit(model.init)(init_key)
            opt_state = jax.jit(optimizer.init)(params)
        host = jax.device_get(TrainState(params, opt_state, np.zeros((), np.int32),
                                         np.asarray(jax.random.key_data(state_key))))
        state = jax.tree.map(
            lambda a: jax.make_array_from_callback(np.shape(a), repl, lambda idx: np.asarray(a)[idx]), host)
        extra = dict(_NEW_EPOCH)
    step = _fetch_int(state.step)
    history = run.read_history(run_dir, step // steps_per_epoch) if stored is not None else []
    if stored is not None:
        epoch, position = divmod(step, steps_per_epoch)
        log(f"resuming {run_dir} at step {step} (epoch {epoch + 1}, batch {position})")
    info = run.RunInfo(
        sigma=tuple(float(s) for s in sigma), split=split, n_samples=int(dataset.n_samples),
        n_times=int(dataset.n_times), time_indices=tuple(int(t) for t in times),
        first_trajectories=int(config.first_trajectories), resolution=resolution,
        data_paths=tuple(config.data), model={"name": config.model, "preset": config.preset, "config": model.config},
        n_train_transitions=len(train_src), steps_per_epoch=steps_per_epoch, weight_decay=config.weight_decay,
        n_devices=n_devices, n_processes=jax.process_count())
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.write_config(run_dir, config)
        info.write(run_dir)
        if stored is not None:  # not the stale "preempted" or "failed" of the run that stopped
            run.write_status(run_dir, "running", step=step)

    # -- what the loop calls --------------------------------------------------------------
    lead_times = np.arange(1, times.size)  # rollouts run over the selected times
    rollout_ids = split["val"][:config.rollout_trajectories]
    eval_batch = -(-config.eval_batch_size // n_devices) * n_devices
    local = distributed.local_slice(batch)
    metric_attrs = provenance(config.to_dict(), run_dir=str(run_dir)) if primary else {}

    def load_batch(at: int):
        idx = batch_indices(config.seed, *divmod(at, steps_per_epoch), len(train_src), batch)
        x, y = train_src.get(idx[local])
        return idx, np.asarray(x, np.float32), np.asarray(y, np.float32)

    def save(status: str, **report):
        try:
            checkpointer.save(state, extra)
        except SymgradError as exc:  # the disk filled up, or the directory became unwritable
            last = checkpointer.latest_step()
            then = (f"rerun the same command to resume from step {last}" if last is not None
                    else "rerun the same command to start again")
            raise SymgradError(f"{exc}; no checkpoint was written at step {step}: {then}") from None
        if primary:
            run.write_status(run_dir, status, step=step, **report)

    n_val = min(len(val_src), config.max_val_transitions or len(val_src)) if val_src is not None else 0
    baseline = (persistence_baseline(val_src, n_val, dataset, rollout_ids, times, sigma)
                if primary else (float("nan"), []))

    def evaluate() -> tuple[float, list[float]]:
        val = float("nan")
        if n_val:
            total = count = 0.0
            for start in range(0, n_val, eval_batch):
                idx, mask = _padded(np.arange(start, min(n_val, start + eval_batch)), eval_batch)
                sl = distributed.local_slice(eval_batch)
                x, y = val_src.get(idx[sl])
                xg, yg, mg = distributed.global_batch(data_sharding, (x, y, mask[sl]), eval_batch)
                s, c = eval_one(state.params, xg, yg, mg)
                total += float(distributed.fetch(s))
                count += float(distributed.fetch(c))
            val = total / count
        rollout: list[float] = []
        if len(rollout_ids) and len(lead_times):
            sums = np.zeros(len(lead_times))
            count = 0.0
            for start in range(0, len(rollout_ids), eval_batch):
                ids, mask = _padded(rollout_ids[start:start + eval_batch], eval_batch)
                sl = distributed.local_slice(eval_batch)
                traj = dataset.states(ids[sl], times)
                tg, mg = distributed.global_batch(data_sharding, (traj, mask[sl]), eval_batch)
                s, c = eval_rollout(state.params, tg, mg)
                sums += distributed.fetch(s)
                count += float(distributed.fetch(c))
            rollout = (sums / count).tolist()
        return val, rollout

    writer = None
    if primary:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=str(run_dir / run.TENSORBOARD_DIR))
    window = {"start": time.perf_counter(), "wait": 0.0, "samples": 0}  # since the last TensorBoard point

    def log_scalars(loss: float, metrics) -> None:
        """The training scalars of the window since the last point."""
        now = time.perf_counter()
        wall = max(now - window["start"], 1e-9)
        lr = float(schedule(step - 1)) if callable(schedule) else float(schedule)
        for tag, value in (("train/loss", loss), ("train/learning_rate", lr),
                           ("train/grad_norm", float(distributed.fetch(metrics["grad_norm"]))),
                           ("train/samples_per_second", window["samples"] / wall),
                           ("train/data_wait_fraction", window["wait"] / wall)):
            writer.add_scalar(tag, value, step)
        window.update(start=now, wait=0.0, samples=0)

    def end_epoch(seconds: float, samples: int) -> None:
        """The epoch that ``step`` completes: evaluate, record, report."""
        val, rollout = evaluate()
        train_smse = extra["epoch_loss_sum"] / max(1, extra["epoch_loss_count"])
        history.append({
            "epoch": step // steps_per_epoch - 1, "step": step, "train_smse": train_smse, "val_smse": val,
            "val_rollout_smse": rollout, "epoch_seconds": seconds,
            "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
        })
        if not primary:
            return
        run.write_metrics(run_dir, history, metric_attrs, lead_times, baseline)
        writer.add_scalar("train/epoch_smse", train_smse, step)
        writer.add_scalar("val/smse", val, step)
        writer.add_scalar("val/persistence_smse", baseline[0], step)
        for lead, value in zip(lead_times, rollout):
            writer.add_scalar(f"val/rollout_smse/lead_{int(lead)}", value, step)
        writer.flush()
        roll = (f", rollout SMSE {rollout[0]:.4g} (1 step) .. {rollout[-1]:.4g} ({len(rollout)} steps)"
                if rollout else "")
        log(f"epoch {step // steps_per_epoch}/{config.epochs}: train SMSE {train_smse:.4g}, "
            f"val SMSE {val:.4g} (persistence {baseline[0]:.4g}){roll}, step {step}")

    def fail_non_finite(idx, metrics) -> None:
        epoch, position = divmod(step, steps_per_epoch)
        report = {"failed_step": step + 1, "failed_epoch": epoch + 1, "failed_batch": position,
                  "transition_indices": idx.tolist(), "loss": float(distributed.fetch(metrics["loss"])),
                  "grad_norm": float(distributed.fetch(metrics["grad_norm"]))}
        save("non-finite", **report)
        raise SymgradError(
            f"non-finite loss or gradient at step {step + 1} (epoch {epoch + 1}, batch {position} of the "
            f"epoch, transitions {idx[:8].tolist()}{'...' if len(idx) > 8 else ''}; loss={report['loss']}, "
            f"grad_norm={report['grad_norm']}); the last good state (step {step}) is checkpointed in "
            f"{checkpointer.directory}. Check the data, lower --lr or set grad_clip_norm, then rerun to "
            "resume (status.json has details)")

    # -- the loop: one step per iteration ------------------------------------------------------
    from tqdm.auto import tqdm

    status = None  # "preempted" when stopped early; else decided at the end
    last_loss = None
    pool = ThreadPoolExecutor(max_workers=1)
    pending = None  # the next batch, loaded while this step computes (never across an epoch end,
    #                 where the evaluation reads the files)
    t_epoch, epoch_samples = time.perf_counter(), 0
    bar = tqdm(total=last_step, initial=min(step, last_step), desc="train", unit="step",
               disable=not (config.progress and primary), dynamic_ncols=True)
    try:
        with preemption.stop_on_sigterm():
            while step < last_step:
                if _all_agree_to_stop(preemption.requested()):
                    status = "preempted"
                    break
                t_wait = time.perf_counter()
                idx, x, y = (pending or pool.submit(load_batch, step)).result()
                window["wait"] += time.perf_counter() - t_wait
                following = step + 1
                pending = (pool.submit(load_batch, following)
                           if following < last_step and following % steps_per_epoch else None)
                if step == config.debug_nan_step:
                    x = np.full_like(x, np.nan)
                xg, yg = distributed.global_batch(data_sharding, (x, y), batch)
                new_state, metrics = step_fn(state, xg, yg)
                if not bool(distributed.fetch(metrics["finite"])):
                    state = new_state  # train_step returned its input: the last good state
                    fail_non_finite(idx, metrics)
                state, step = new_state, following
                last_loss = float(distributed.fetch(metrics["loss"]))
                extra = {"epoch_loss_sum": extra["epoch_loss_sum"] + last_loss,
                         "epoch_loss_count": extra["epoch_loss_count"] + 1}
                epoch_samples += batch
                window["samples"] += batch
                if writer is not None and _every(step, config.log_every):
                    log_scalars(last_loss, metrics)
                bar.update(1)
                bar.set_postfix(epoch=f"{min(step // steps_per_epoch + 1, config.epochs)}/{config.epochs}", loss=f"{last_loss:.4g}",
                                samples_s=f"{epoch_samples / (time.perf_counter() - t_epoch):.1f}")
                if _every(step, steps_per_epoch):
                    end_epoch(time.perf_counter() - t_epoch, epoch_samples)
                    extra = dict(_NEW_EPOCH)
                    save("running")
                    t_epoch, epoch_samples = time.perf_counter(), 0
                elif _every(step, config.checkpoint_every):
                    save("running")
                if config.debug_step_delay:
                    time.sleep(config.debug_step_delay)
            if status is None:
                status = "finished" if step >= total_steps else "max_steps"
            save(status)
            if status != "finished":
                log(f"stopped ({status}) at step {step}; checkpoint saved in {checkpointer.directory}; "
                    "rerun the same command to continue")
    except BaseException as exc:
        if primary:
            with contextlib.suppress(Exception):  # never hide the error that stopped training
                run.record_failure(run_dir, exc, checkpointer.latest_step())
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        checkpointer.close()
        if writer is not None:
            writer.close()
    return TrainResult(status, step, step // steps_per_epoch, run_dir, last_loss, state)
