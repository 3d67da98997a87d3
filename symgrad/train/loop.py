"""The training loop: data, sigma, state init/resume, epochs, evaluation, metrics, stops.

Only this module (with ``checkpoint``) touches files and holds mutable state; the math is
in :mod:`symgrad.train.step`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from symgrad import preemption
from symgrad.errors import SymgradError
from symgrad.io import ExclusiveLock, write_json_atomic
from symgrad.loss import channel_scales
from symgrad.train import distributed
from symgrad.train.checkpoint import (
    CONFIG_FILE, LOCK_FILE, RUN_FILE, STATUS_FILE, Checkpointer, checkpoint_dir, read_json,
)
from symgrad.train.config import TrainConfig
from symgrad.train.state import TrainState, batch_indices
from symgrad.train.step import (
    batch_sharding, learning_rate_schedule, make_eval_fns, make_mesh, make_optimizer, make_train_step,
    replicated_sharding,
)

RUN_FORMAT_VERSION = 1
TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard: event files, written by the primary process
METRICS_JSON = "metrics.json"
_SIGMA_DIRECT_LIMIT = 1 << 26  # target values loaded at once for sigma; above: chunked


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


def _imports():
    try:
        from symgrad.data import TransitionSource, open_dataset, split_trajectories
        from symgrad.models import build, surrogate_apply
    except ImportError as exc:  # pragma: no cover - only while the parts are missing
        raise SymgradError(f"training needs symgrad.data and symgrad.models ({exc})") from exc
    return open_dataset, split_trajectories, TransitionSource, build, surrogate_apply


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
# run directory preparation


def _stored_config(run_dir: Path) -> TrainConfig | None:
    if not (run_dir / CONFIG_FILE).exists():
        return None
    return TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE, "stored training config"))


def _discard_run(run_dir: Path) -> None:
    """Remove a run's files (not the lock): ``--overwrite``, or a run with nothing trained."""
    if distributed.is_primary():
        for name in (CONFIG_FILE, RUN_FILE, STATUS_FILE, METRICS_JSON, "metrics.nc", "metrics.csv"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)


def _prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool | None, force: bool,
                     overwrite: bool) -> tuple[bool, dict | None]:
    """Decide between fresh start and resume; return ``(resuming, stored_run_info)``."""
    ckpt = Checkpointer(run_dir, keep=config.keep, read_only=True)
    has_ckpt = bool(ckpt.steps())
    ckpt.close()
    started = (run_dir / CONFIG_FILE).exists() or (run_dir / RUN_FILE).exists()
    if overwrite:
        if resume:
            raise SymgradError("--resume and --overwrite contradict each other; choose one")
        _discard_run(run_dir)
        return False, None
    if resume is False:
        if has_ckpt or started:
            raise SymgradError(
                f"{run_dir} already holds a run; resume it (default), or pass --overwrite to "
                "discard it, or choose a new --out")
        return False, None
    if not has_ckpt:
        if resume:
            raise SymgradError(f"--resume given but {checkpoint_dir(run_dir)} has no checkpoint; "
                               "drop --resume to start a new run")
        # status.json and metrics.json are written only with or after a checkpoint: without
        # them the run was killed before its first save and nothing was trained.
        trained = (run_dir / STATUS_FILE).exists() or (run_dir / METRICS_JSON).exists()
        if started and trained:
            raise SymgradError(
                f"{run_dir} holds a trained run but no checkpoint (they were deleted); pass "
                "--overwrite to start it again from scratch, or choose a new --out")
        if started:
            # Killed before its first checkpoint: the same command starts it again (a
            # requeued cluster job must not fail here). Other settings would silently
            # replace the recorded run: refuse those.
            stored = _stored_config(run_dir)
            diffs = config.material_differences(stored) if stored is not None else None
            if diffs:
                listing = ", ".join(f"{k}: stored {old!r} != given {new!r}" for k, (old, new) in diffs.items())
                raise SymgradError(
                    f"{run_dir} holds a run that stopped before its first checkpoint, with a different "
                    f"config ({listing}); use the same settings, --overwrite to start anew, or a new --out")
            _discard_run(run_dir)
        return False, None
    stored = _stored_config(run_dir)
    diffs = config.material_differences(stored)
    if diffs and not force:
        listing = ", ".join(f"{k}: stored {old!r} != given {new!r}" for k, (old, new) in diffs.items())
        raise SymgradError(
            f"{run_dir} holds a run with a different config ({listing}); use the same settings "
            "to resume, --force to resume with the new ones, --overwrite to restart, or a new --out")
    return True, read_json(run_dir / RUN_FILE, "run description")


def _record_failure(run_dir: Path, exc: BaseException, last_step: int | None) -> None:
    """``status.json`` after training stopped on an error: never a stale "running".

    A status that already explains the stop (the non-finite report) is kept. Otherwise, with
    a checkpoint to resume from, it says "failed" (or "interrupted"), why, and the step a rerun
    resumes from. Without one, or when even this small file cannot be written (a full disk),
    it is removed: a rerun then restarts or resumes from the checkpoints, as after a kill."""
    path = run_dir / STATUS_FILE
    try:
        if read_json(path, "run status").get("status") != "running":
            return
    except SymgradError:  # missing or unreadable: nothing to keep
        pass
    if last_step is not None:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        try:
            write_json_atomic(path, {"status": status, "reason": str(exc) or type(exc).__name__,
                                     "resume_step": last_step})
            return
        except SymgradError:
            pass
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# metrics


def _write_metrics(run_dir: Path, history: list[dict], attrs: dict, lead_times) -> None:
    import xarray as xr

    from symgrad.io import write_netcdf_atomic

    write_json_atomic(run_dir / METRICS_JSON, history)
    if not history:
        return
    epochs = np.array([h["epoch"] for h in history])
    scalar = ("step", "train_smse", "val_smse", "epoch_seconds", "samples_per_second")
    n_lead = len(lead_times)
    rollout = np.full((len(history), n_lead), np.nan)
    for i, h in enumerate(history):
        r = h.get("val_rollout_smse") or []
        rollout[i, :len(r)] = r
    ds = xr.Dataset(
        {name: ("epoch", np.array([h[name] for h in history], dtype=float)) for name in scalar},
        coords={"epoch": epochs, "lead_time": np.asarray(lead_times, dtype=int)},
    )
    ds["val_rollout_smse"] = (("epoch", "lead_time"), rollout)
    ds["train_smse"].attrs = {"long_name": "mean training SMSE over the epoch's steps", "units": "1"}
    ds["val_smse"].attrs = {"long_name": "one-step validation SMSE (end of epoch)", "units": "1"}
    ds["val_rollout_smse"].attrs = {
        "long_name": "autoregressive validation rollout SMSE against the true trajectory",
        "units": "1"}
    ds["lead_time"].attrs = {"long_name": "number of model steps from the initial state"}
    ds.attrs.update(attrs)
    write_netcdf_atomic(ds, run_dir / "metrics.nc")
    lines = ["epoch,step,train_smse,val_smse,val_rollout_smse_last,epoch_seconds,samples_per_second"]
    for i, h in enumerate(history):
        last = rollout[i, -1] if n_lead else float("nan")
        lines.append(",".join(str(v) for v in (
            h["epoch"], h["step"], h["train_smse"], h["val_smse"], last,
            h["epoch_seconds"], h["samples_per_second"])))
    tmp = run_dir / ".metrics.csv.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(run_dir / "metrics.csv")


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
    with ExclusiveLock(run_dir / LOCK_FILE, f"run directory {run_dir}"):
        return _train(config, run_dir, resume=resume, force=force, overwrite=overwrite, log=log)


def _train(config: TrainConfig, run_dir: Path, *, resume, force, overwrite, log) -> TrainResult:
    open_dataset, split_trajectories, TransitionSource, build, surrogate_apply = _imports()
    from symgrad.data.cache import open_cache
    from symgrad.data.transitions import first_per_file

    config = _resolve_paths(config)
    primary = distributed.is_primary()
    resuming, stored_run = _prepare_run_dir(run_dir, config, resume, force, overwrite)

    dataset = open_dataset(list(config.data))
    if resuming:
        if stored_run["n_samples"] != dataset.n_samples:
            raise SymgradError(
                f"the data now hold {dataset.n_samples} trajectories but the run was trained on "
                f"{stored_run['n_samples']}; give the same --data files to resume")
        split = {k: np.asarray(v, dtype=np.int64) for k, v in stored_run["split"].items()}
        sigma = np.asarray(stored_run["sigma"], dtype=np.float64)
    else:
        # The split is drawn over the selected trajectories and stored as dataset indices.
        selected = first_per_file(dataset.sample_counts, config.trajectories_per_file)
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
    if not resuming:
        sigma = training_sigma(train_src)

    n_devices = jax.device_count()
    batch = config.batch_size
    if batch % n_devices:
        raise SymgradError(f"--batch-size {batch} must be a multiple of the {n_devices} devices")
    steps_per_epoch = len(train_src) // batch
    if steps_per_epoch == 0:
        raise SymgradError(f"only {len(train_src)} training transitions, fewer than one batch "
                           f"of {batch}; use a smaller --batch-size or more data")
    model = build(config.model, config.preset, _square_resolution(dataset.resolution),
                  **config.model_overrides)
    optimizer = make_optimizer(config, steps_per_epoch)
    apply_fn = surrogate_apply(model.apply, sigma)
    mesh = make_mesh()
    repl, data_sharding = replicated_sharding(mesh), batch_sharding(mesh)
    step_fn = make_train_step(apply_fn, optimizer, sigma, mesh)
    eval_one, eval_rollout = make_eval_fns(apply_fn, sigma, mesh)

    key = jax.random.key(config.seed)
    init_key, state_key = jax.random.split(key)

    def init_state():
        # Every process initialises on its first local device (same key, same values) and
        # the host copy is replicated over the global mesh: the initialisation program is
        # the same for any device count (so it is compiled once and cached).
        device = jax.local_devices()[0]
        with jax.default_device(device):
            params = jax.jit(model.init)(init_key)
            opt_state = jax.jit(optimizer.init)(params)
        host = jax.device_get((params, opt_state, np.zeros((), np.int32),
                               np.asarray(jax.random.key_data(state_key))))
        params, opt_state, step, rng = jax.tree.map(
            lambda a: jax.make_array_from_callback(np.shape(a), repl, lambda idx: np.asarray(a)[idx]),
            host)
        return TrainState(params, opt_state, step, rng, np.asarray(0, np.int32), np.asarray(0, np.int32))

    run_info = {
        "format_version": RUN_FORMAT_VERSION,
        "sigma": [float(s) for s in sigma],
        "split": {k: v.tolist() for k, v in split.items()},
        "n_samples": int(dataset.n_samples),
        "n_times": int(dataset.n_times),
        "time_indices": times.tolist(),  # the data selection, with the split above
        "trajectories_per_file": int(config.trajectories_per_file),
        "resolution": _square_resolution(dataset.resolution),
        "data_paths": list(config.data),
        "model": {"name": config.model, "preset": config.preset, "config": model.config},
        "n_train_transitions": len(train_src),
        "steps_per_epoch": steps_per_epoch,
        "weight_decay": config.weight_decay,
        "n_devices": n_devices,
        "n_processes": jax.process_count(),
    }
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    history: list[dict] = []
    extra = {"epoch_loss_sum": 0.0, "epoch_loss_count": 0}
    if resuming:
        params_shape = jax.eval_shape(model.init, init_key)
        sds = lambda t: jax.tree.map(  # noqa: E731
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), t)
        abstract = TrainState(
            sds(params_shape), sds(jax.eval_shape(optimizer.init, params_shape)),
            jax.ShapeDtypeStruct((), np.int32, sharding=repl),
            jax.ShapeDtypeStruct((2,), np.uint32, sharding=repl),
            np.asarray(0, np.int32), np.asarray(0, np.int32))
        state, extra = checkpointer.restore(abstract)
        state = state._replace(epoch=np.asarray(state.epoch, np.int32), position=np.asarray(state.position, np.int32))
        if (run_dir / METRICS_JSON).exists():
            history = [h for h in read_json(run_dir / METRICS_JSON, "metrics")
                       if h["epoch"] < int(state.epoch)]
        log(f"resuming {run_dir} at step {_fetch_int(state.step)} "
            f"(epoch {int(state.epoch) + 1}, batch {int(state.position)})")
        if primary:  # not the stale "preempted" or "failed" of the run that stopped
            write_json_atomic(run_dir / STATUS_FILE, {
                "status": "running", "step": _fetch_int(state.step), "epoch": int(state.epoch),
                "position": int(state.position)})
    else:
        state = init_state()
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, config.to_dict())
        write_json_atomic(run_dir / RUN_FILE, run_info)

    from symgrad.io import provenance

    metric_attrs = provenance(config.to_dict(), run_dir=str(run_dir)) if primary else {}
    lead_times = np.arange(1, times.size)  # rollouts run over the selected times
    rollout_ids = split["val"][:config.rollout_trajectories]
    eval_batch = -(-config.eval_batch_size // n_devices) * n_devices
    local = distributed.local_slice(batch)
    n_train = len(train_src)

    def load_batch(epoch: int, position: int):
        idx = batch_indices(config.seed, epoch, position, n_train, batch)
        x, y = train_src.get(idx[local])
        return idx, np.asarray(x, np.float32), np.asarray(y, np.float32)

    def save(status: str, **info):
        try:
            checkpointer.save(state, extra)
        except SymgradError as exc:  # the disk filled up, or the directory became unwritable
            last = checkpointer.latest_step()
            resume = (f"rerun the same command to resume from step {last}" if last is not None
                      else "rerun the same command to start again")
            raise SymgradError(f"{exc}; no checkpoint was written at step {_fetch_int(state.step)}: "
                               f"{resume}") from None
        if primary:
            write_json_atomic(run_dir / STATUS_FILE, {
                "status": status, "step": _fetch_int(state.step), "epoch": int(state.epoch),
                "position": int(state.position), **info})

    def evaluate() -> tuple[float, list[float]]:
        val = float("nan")
        if val_src is not None and len(val_src):
            n_val = len(val_src)
            if config.max_val_transitions:
                n_val = min(n_val, config.max_val_transitions)
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

    from tqdm.auto import tqdm

    schedule = learning_rate_schedule(config, steps_per_epoch)
    writer = None
    if primary:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=str(run_dir / TENSORBOARD_DIR))
    window = {"start": time.perf_counter(), "wait": 0.0, "samples": 0}  # since the last TensorBoard point

    def log_scalars(step: int, loss: float, metrics) -> None:
        """Every ``log_every`` steps: the training scalars of the window since the last point."""
        now = time.perf_counter()
        wall = max(now - window["start"], 1e-9)
        lr = float(schedule(step - 1)) if callable(schedule) else float(schedule)
        for tag, value in (("train/loss", loss), ("train/learning_rate", lr),
                           ("train/grad_norm", float(distributed.fetch(metrics["grad_norm"]))),
                           ("train/samples_per_second", window["samples"] / wall),
                           ("train/data_wait_fraction", window["wait"] / wall)):
            writer.add_scalar(tag, value, step)
        window.update(start=now, wait=0.0, samples=0)

    status = "finished"
    last_loss = None
    pool = ThreadPoolExecutor(max_workers=1)
    # One bar for the whole run (its ETA is the run's), from where a resumed run stands.
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    bar = tqdm(total=total_steps, initial=min(_fetch_int(state.step), total_steps), desc="train", unit="step",
               disable=not (config.progress and primary), dynamic_ncols=True)
    try:
        with preemption.stop_on_sigterm():
            epoch = int(state.epoch)
            while epoch < config.epochs:
                position = int(state.position)
                t_epoch = time.perf_counter()
                samples = 0
                pending = pool.submit(load_batch, epoch, position) if position < steps_per_epoch else None
                while position < steps_per_epoch:
                    step = _fetch_int(state.step)
                    if config.max_steps and step >= config.max_steps:
                        status = "max_steps"
                        break
                    if _all_agree_to_stop(preemption.requested()):
                        status = "preempted"
                        break
                    t_wait = time.perf_counter()
                    idx, x, y = pending.result()
                    window["wait"] += time.perf_counter() - t_wait
                    if position + 1 < steps_per_epoch:
                        pending = pool.submit(load_batch, epoch, position + 1)
                    if step == config.debug_nan_step:
                        x = np.full_like(x, np.nan)
                    xg, yg = distributed.global_batch(data_sharding, (x, y), batch)
                    new_state, metrics = step_fn(state, xg, yg)
                    if not bool(distributed.fetch(metrics["finite"])):
                        # train_step returned the input state unchanged: the last good one.
                        state = new_state._replace(epoch=np.asarray(epoch, np.int32), position=np.asarray(position, np.int32))
                        report = {"failed_step": step + 1, "failed_epoch": epoch + 1,
                                  "failed_batch": position, "transition_indices": idx.tolist(),
                                  "loss": float(distributed.fetch(metrics["loss"])),
                                  "grad_norm": float(distributed.fetch(metrics["grad_norm"]))}
                        save("non-finite", **report)
                        bar.close()
                        raise SymgradError(
                            f"non-finite loss or gradient at step {step + 1} (epoch {epoch + 1}, "
                            f"batch {position} of the epoch, transitions {idx[:8].tolist()}"
                            f"{'...' if len(idx) > 8 else ''}; loss={report['loss']}, "
                            f"grad_norm={report['grad_norm']}); the last good state (step {step}) "
                            f"is checkpointed in {checkpointer.directory}. Check the data, lower "
                            "--lr or set grad_clip_norm, then rerun to resume (status.json has details)")
                    position += 1
                    loss = float(distributed.fetch(metrics["loss"]))
                    last_loss = loss
                    extra = {"epoch_loss_sum": extra["epoch_loss_sum"] + loss,
                             "epoch_loss_count": extra["epoch_loss_count"] + 1}
                    state = new_state._replace(epoch=np.asarray(epoch, np.int32), position=np.asarray(position, np.int32))
                    samples += batch
                    window["samples"] += batch
                    if writer is not None and (step + 1) % config.log_every == 0:
                        log_scalars(step + 1, loss, metrics)
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss:.4g}",
                                    samples_s=f"{samples / (time.perf_counter() - t_epoch):.1f}")
                    if (step + 1) % config.checkpoint_every == 0 and position < steps_per_epoch:
                        save("running")
                    if config.debug_step_delay:
                        time.sleep(config.debug_step_delay)
                if status != "finished":
                    break
                seconds = time.perf_counter() - t_epoch
                val, rollout = evaluate()
                train_smse = extra["epoch_loss_sum"] / max(1, extra["epoch_loss_count"])
                history.append({
                    "epoch": epoch, "step": _fetch_int(state.step), "train_smse": train_smse,
                    "val_smse": val, "val_rollout_smse": rollout, "epoch_seconds": seconds,
                    "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
                })
                epoch += 1
                state = state._replace(epoch=np.asarray(epoch, np.int32), position=np.asarray(0, np.int32))
                extra = {"epoch_loss_sum": 0.0, "epoch_loss_count": 0}
                if primary:
                    _write_metrics(run_dir, history, metric_attrs, lead_times)
                    at = history[-1]["step"]
                    writer.add_scalar("train/epoch_smse", train_smse, at)
                    writer.add_scalar("val/smse", val, at)
                    for lead, value in zip(lead_times, rollout):
                        writer.add_scalar(f"val/rollout_smse/lead_{int(lead)}", value, at)
                    writer.flush()
                    roll = (f", rollout SMSE {rollout[0]:.4g} (1 step) .. {rollout[-1]:.4g} ({len(rollout)} steps)"
                            if rollout else "")
                    log(f"epoch {epoch}/{config.epochs}: train SMSE {train_smse:.4g}, "
                        f"val SMSE {val:.4g}{roll}, step {history[-1]['step']}")
                save("running" if epoch < config.epochs else "finished")
            if status != "finished":
                save(status)
                log(f"stopped ({status}) at step {_fetch_int(state.step)}; checkpoint saved in "
                    f"{checkpointer.directory}; rerun the same command to continue")
            else:
                save("finished")
    except BaseException as exc:
        if primary:
            with contextlib.suppress(Exception):  # never hide the error that stopped training
                _record_failure(run_dir, exc, checkpointer.latest_step())
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        checkpointer.close()
        if writer is not None:
            writer.close()
    return TrainResult(status, _fetch_int(state.step), int(state.epoch), run_dir, last_loss, state)
