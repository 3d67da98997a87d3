"""A run's metrics, the one module that writes and reads them.

``metrics.json`` (what a resume reads back), ``metrics.nc`` (the archival record, with
provenance, which the figures and the report read through :func:`read_metrics`) and
``metrics.csv`` (for a quick look): one record per epoch. :class:`MetricsLog` keeps the
records during training and writes them, with the TensorBoard events, on the primary
process. The file names are :mod:`symgrad.train.run`'s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from symgrad.errors import SymgradError
from symgrad.io import atomic_write, write_json_atomic
from symgrad.train.run import METRICS_CSV, METRICS_JSON, METRICS_NC, TENSORBOARD_DIR, read_json

# --------------------------------------------------------------------------------------
# the files


_RECORD_KEYS = ("epoch", "step", "train_smse", "val_smse", "epoch_seconds", "samples_per_second")
# Records of some models only (the relaxed model's relaxation), and their attributes in metrics.nc.
_MODEL_KEYS = {
    "relaxation_spread": {"long_name": "spread of the relaxed model's coefficients over the group "
                                       "(sum of squared deviations from their group mean, end of epoch)", "units": "1"},
    "relaxation_penalty": {"long_name": "relaxation penalty: relaxation_weight times the coefficient spread "
                                        "(end of epoch)", "units": "1"},
}


def read_history(run_dir: Path, before_epoch: int, log=print) -> list[dict]:
    """The epoch records of a resumed run, up to the epoch it resumes in.

    A damaged ``metrics.json`` does not block the resume (the checkpoints are what a resume
    needs): it is kept aside as ``metrics.json.damaged``, said so, and the records are read
    from ``metrics.nc`` instead (or start empty when that cannot be read either)."""
    path = run_dir / METRICS_JSON
    if not path.exists():
        return []
    try:
        history = read_json(path, "metrics", list)
        if not all(isinstance(h, dict) and all(k in h for k in _RECORD_KEYS) for h in history):
            raise SymgradError(f"{path} is corrupt (not a list of epoch records)")
    except SymgradError as exc:
        history = _history_from_netcdf(run_dir / METRICS_NC)
        if log is None:  # not the primary process: it neither moves nor reports the file
            return [h for h in history if h["epoch"] < before_epoch]
        kept = path.with_name(path.name + ".damaged")
        path.replace(kept)
        log(f"warning: {exc}; kept as {kept}, " + (f"the {len(history)} epoch records of {METRICS_NC} used instead"
                                                   if history else "the epoch records before this resume are lost"))
    return [h for h in history if h["epoch"] < before_epoch]


def _history_from_netcdf(path: Path) -> list[dict]:
    """The records of ``metrics.json`` as ``metrics.nc`` holds them ([] when unreadable)."""
    import xarray as xr

    try:
        with xr.open_dataset(path) as ds:
            ds = ds.load()
    except Exception:  # missing or damaged too: nothing to recover
        return []
    out = []
    for i, epoch in enumerate(ds["epoch"].values):
        rollout = ds["val_rollout_smse"].values[i] if "val_rollout_smse" in ds else np.zeros(0)
        finite = np.flatnonzero(np.isfinite(rollout))
        record = {"epoch": int(epoch), "step": int(ds["step"].values[i]),
                  "val_rollout_smse": [float(v) for v in rollout[:finite[-1] + 1]] if finite.size else []}
        record.update({k: float(ds[k].values[i]) for k in _RECORD_KEYS[2:]})
        record.update({k: float(ds[k].values[i]) for k in _MODEL_KEYS if k in ds})
        out.append(record)
    return out


def read_metrics(run_dir: str | Path):
    """``RUN_DIR/metrics.nc`` as a loaded ``xarray.Dataset`` (the file closed again)."""
    import xarray as xr

    path = Path(run_dir) / METRICS_NC
    if not path.is_file():
        raise SymgradError(f"{run_dir} has no {METRICS_NC}; pass run directories of 'symgrad train' "
                           "that finished at least one epoch")
    with xr.open_dataset(path) as ds:
        return ds.load()


def read_runs(run_dirs) -> list[tuple[str, object]]:
    """``(label, metrics dataset)`` of each run directory, labelled by the model and preset
    of the training config stored in the file (what the training figure draws)."""
    out = []
    for d in run_dirs:
        ds = read_metrics(d)
        config = json.loads(ds.attrs.get("config", "{}"))
        out.append((f"{config.get('model', '?')} {config.get('preset', '?')} ({Path(d).name})", ds))
    return out


def write_metrics(run_dir: Path, history: list[dict], attrs: dict, lead_times, baseline=None) -> None:
    """``metrics.json``, ``metrics.nc`` and ``metrics.csv`` of ``history``, each written atomically.

    ``baseline`` is ``(val, rollout)`` of :class:`symgrad.train.evaluate.PersistenceBaseline`:
    the persistence errors on the same validation transitions and rollouts, stored beside
    the curves."""
    write_json_atomic(run_dir / METRICS_JSON, history)
    if not history:
        return
    ds, rollout = _dataset(history, lead_times, baseline)
    ds.attrs.update(attrs)
    from symgrad.io import write_netcdf_atomic

    write_netcdf_atomic(ds, run_dir / METRICS_NC)
    lines = ["epoch,step,train_smse,val_smse,val_rollout_smse_last,epoch_seconds,samples_per_second"]
    for i, h in enumerate(history):
        last = rollout[i, -1] if len(lead_times) else float("nan")
        lines.append(",".join(str(v) for v in (
            h["epoch"], h["step"], h["train_smse"], h["val_smse"], last,
            h["epoch_seconds"], h["samples_per_second"])))
    with atomic_write(run_dir / METRICS_CSV) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _dataset(history: list[dict], lead_times, baseline):
    """The records as the dataset of ``metrics.nc`` (without provenance), and the rollout
    errors padded to all lead times."""
    import xarray as xr

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
    for name, attrs in _MODEL_KEYS.items():
        if any(name in h for h in history):
            ds[name] = ("epoch", np.array([h.get(name, np.nan) for h in history], dtype=float), attrs)
    ds["train_smse"].attrs = {"long_name": "mean training SMSE over the epoch's steps", "units": "1"}
    ds["val_smse"].attrs = {"long_name": "one-step validation SMSE (end of epoch)", "units": "1"}
    ds["val_rollout_smse"].attrs = {
        "long_name": "autoregressive validation rollout SMSE against the true trajectory",
        "units": "1"}
    ds["lead_time"].attrs = {"long_name": "number of model steps from the initial state"}
    ds["epoch"].attrs = {"long_name": "training epoch"}
    ds["step"].attrs = {"long_name": "optimizer steps at the end of the epoch"}
    ds["epoch_seconds"].attrs = {"long_name": "wall-clock time of the epoch", "units": "s"}
    ds["samples_per_second"].attrs = {"long_name": "training samples per second over the epoch", "units": "s-1"}
    ds.attrs["title"] = "symgrad training metrics"
    if baseline is not None:
        val_p, rollout_p = baseline
        ds["val_persistence_smse"] = ((), float(val_p), {
            "long_name": "persistence baseline SMSE(x, y) on the validation transitions", "units": "1"})
        padded = np.full(n_lead, np.nan)
        padded[:len(rollout_p)] = rollout_p
        ds["val_rollout_persistence_smse"] = ("lead_time", padded, {
            "long_name": "persistence baseline SMSE(x_0, x_t) on the validation rollouts", "units": "1"})
    return ds, rollout


# --------------------------------------------------------------------------------------
# during training


class MetricsLog:
    """The records of a training run: TensorBoard points of the training scalars every
    ``log_every`` steps (:meth:`point`) and one record per epoch (:meth:`epoch`), written to
    the metrics files and TensorBoard. Only the primary process writes; every process keeps
    the history."""

    def __init__(self, run_dir: Path, history: list[dict], attrs: dict, lead_times, baseline, schedule,
                 primary: bool):
        self.run_dir, self.history, self.attrs = run_dir, history, attrs
        self.lead_times, self.baseline, self.schedule = lead_times, baseline, schedule
        self.writer = None
        if primary:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=str(run_dir / TENSORBOARD_DIR))
        self._start, self._wait, self._samples = time.perf_counter(), 0.0, 0  # since the last point

    def count(self, samples: int, wait: float) -> None:
        """A step of ``samples`` trained, after waiting ``wait`` seconds for its batch."""
        self._samples += samples
        self._wait += wait

    def point(self, step: int, loss: float, grad_norm) -> None:
        """The training scalars of the window since the last point."""
        if self.writer is None:
            return
        now = time.perf_counter()
        wall = max(now - self._start, 1e-9)
        lr = float(self.schedule(step - 1)) if callable(self.schedule) else float(self.schedule)
        for tag, value in (("train/loss", loss), ("train/learning_rate", lr), ("train/grad_norm", float(grad_norm)),
                           ("train/samples_per_second", self._samples / wall),
                           ("train/data_wait_fraction", self._wait / wall)):
            self.writer.add_scalar(tag, value, step)
        self._start, self._wait, self._samples = now, 0.0, 0

    def epoch(self, record: dict) -> None:
        """The record of the epoch that ends at ``record["step"]``."""
        self.history.append(record)
        if self.writer is None:
            return
        step = record["step"]
        write_metrics(self.run_dir, self.history, self.attrs, self.lead_times, self.baseline)
        self.writer.add_scalar("train/epoch_smse", record["train_smse"], step)
        self.writer.add_scalar("val/smse", record["val_smse"], step)
        self.writer.add_scalar("val/persistence_smse", self.baseline[0], step)
        for name in _MODEL_KEYS:
            if name in record:
                self.writer.add_scalar(f"train/{name}", record[name], step)
        for lead, value in zip(self.lead_times, record["val_rollout_smse"]):
            self.writer.add_scalar(f"val/rollout_smse/lead_{int(lead)}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
