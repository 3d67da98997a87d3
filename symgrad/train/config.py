"""The one typed training configuration: defaults < TOML file < command-line flags.

``TrainConfig`` is frozen; derive variants with ``dataclasses.replace`` or
``TrainConfig.with_overrides``. It is saved as ``config.json`` in the run directory and
compared on resume (:meth:`TrainConfig.material_differences`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from symgrad.errors import SymgradError
from symgrad.names import MODELS, PRESETS, SCHEDULES



def _flag(default, help: str, *, group: str, flag: str | None = None, **argparse_kwargs):
    """A field that ``symgrad train`` offers as a flag: ``--field-name`` (or ``flag``), with
    this help and group; its default is shown from the field itself (symgrad.commands.train)."""
    return field(default=default, metadata={"help": help, "group": group, "flag": flag, **argparse_kwargs})


# Seeds are non-negative 64-bit integers (numpy's SeedSequence takes no negative one, and
# jax.random.key none beyond int64); symgrad generate's --seed has the same range.
MAX_SEED = 2**63 - 1

_DATA, _OPT, _RUNS = "model and data", "optimisation", "checkpoints and runs"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (paper study defaults).

    Fields made with ``_flag`` are also ``symgrad train`` flags; the others are set in a
    ``--config`` TOML file.
    """

    # model
    model: str = _flag("unet", "architecture", group=_DATA, choices=MODELS)
    preset: str = _flag("tiny", "model size", group=_DATA, choices=PRESETS)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    data: tuple[str, ...] = _flag((), "dataset file(s), concatenated by trajectory (netCDF, or The Well's "
                                  "HDF5: a file, a split directory, a glob, or its data/ root whose train/valid/test "
                                  "directories are the split)", group=_DATA, nargs="+", metavar="FILE.nc")
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = _flag(0, "random seed of init, split and batch order", group=_DATA)
    # "" = read batches from the files; else a directory where the data are converted once
    # into a memory-mapped array that batches are copied from (symgrad.data.cache)
    data_cache: str = _flag("", "convert the data once into a memory-mapped array in DIR and read batches from "
                            "it (~20x faster at 128x128; needs the data's uncompressed size on disk)",
                            group=_DATA, metavar="DIR")
    first_trajectories: int = _flag(0, "use the first K trajectories of each --data entry: a file, or a "
                                    "directory or glob of shards such as one PDEGym family (the study: 5000; "
                                    "0 = all)", group=_DATA, metavar="K")
    # 1 = the stored grid; else each state is averaged over coarsen x coarsen blocks of cells
    # (symgrad.data.coarsen: exact and conservative), e.g. 4 for The Well's 512x512 -> 128x128
    coarsen: int = _flag(1, "average F x F blocks of cells of every state, exactly and conservatively (The Well's "
                         "512x512 -> 128x128: 4; 1 = as stored)", group=_DATA, metavar="F")
    # () = all stored times; else the time indices used, increasing (the study: 16 of 21),
    # whose consecutive pairs are the transitions and whose span is the rollout
    time_indices: tuple[int, ...] = _flag((), "stored time indices to use, increasing (the study: 0 ... 15); "
                                          "transitions are their consecutive pairs (none given = all)",
                                          group=_DATA, nargs="+", metavar="T")
    # optimisation (the study: AdamW, lr 5e-4, wd 1e-6, batch 64, 90 epochs)
    epochs: int = _flag(90, "epochs", group=_OPT)
    batch_size: int = _flag(64, "global batch size, a multiple of the device count", group=_OPT)
    learning_rate: float = _flag(5e-4, "peak learning rate", group=_OPT, flag="--lr")
    weight_decay: float = _flag(1e-6, "AdamW weight decay", group=_OPT)
    # the relaxed model's penalty: this weight times the spread of its coefficients over D4
    # (symgrad.models.coefficient_spread), added to the SMSE it trains on; other models ignore it
    relaxation_weight: float = _flag(1e-3, "weight of the relaxed model's relaxation penalty, the spread of its "
                                     "coefficients over the group (other models ignore it)", group=_OPT)
    schedule: str = _flag("constant", "learning-rate schedule (cosine: decay to 0 over all steps)",
                          group=_OPT, choices=SCHEDULES)
    warmup_steps: int = _flag(0, "linear warm-up steps from 0, for either schedule", group=_OPT)
    grad_clip_norm: float = _flag(0.0, "clip gradients to this global norm (0 = off)", group=_OPT,
                                  flag="--grad-clip")
    max_steps: int = _flag(0, "stop (with a checkpoint) after this global optimiser step (0 = no limit)",
                           group=_OPT)
    # checkpoints
    checkpoint_every: int = _flag(500, "steps between checkpoints (also one at each epoch end)", group=_RUNS)
    keep: int = _flag(3, "checkpoints to keep", group=_RUNS)
    # evaluation
    eval_batch_size: int = 64
    max_val_transitions: int = 0  # 0 = all validation transitions
    rollout_trajectories: int = 8  # validation trajectories rolled out per epoch (0 = none)
    # interface
    progress: bool = _flag(True, "no progress bar", group=_RUNS, flag="--no-progress")
    log_every: int = _flag(50, "steps between TensorBoard points (RUN_DIR/tensorboard) of loss, learning rate, "
                           "gradient norm, samples/s and data-wait fraction", group=_RUNS, metavar="N")

    def __post_init__(self):
        _check_types(self)
        # Normalise containers so that TOML/JSON/CLI inputs compare equal.
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        object.__setattr__(self, "time_indices", tuple(int(t) for t in self.time_indices))
        object.__setattr__(self, "model_overrides", dict(self.model_overrides))
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.model not in MODELS or self.preset not in PRESETS:
            problems.append(f"model must be one of {MODELS} and preset one of {PRESETS}, "
                            f"got {self.model!r} and {self.preset!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "keep", "checkpoint_every", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        # Written so that NaN fails each test (every comparison with NaN is false): a NaN
        # setting would train NaN parameters and checkpoint them as the "last good state".
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        for name in ("weight_decay", "grad_clip_norm", "relaxation_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_steps < 0:
            problems.append(f"max_steps must be >= 0 (0 = no limit), got {self.max_steps}")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed}")
        if self.first_trajectories < 0:
            problems.append(f"first_trajectories must be >= 0 (0 = all), got {self.first_trajectories}")
        if self.coarsen < 1:
            problems.append(f"coarsen must be >= 1 (1 = as stored), got {self.coarsen}")
        t = self.time_indices
        if t and (len(t) < 2 or min(t) < 0 or any(b <= a for a, b in zip(t, t[1:]))):
            problems.append(f"time_indices must be at least 2 increasing indices >= 0, got {list(t)}")
        if (len(self.split_fractions) != 3 or not all(0 <= f <= 1 for f in self.split_fractions)
                or not abs(sum(self.split_fractions) - 1) <= 1e-6):
            problems.append(f"split_fractions must be 3 numbers summing to 1, got {self.split_fractions}")
        if problems:
            raise SymgradError("invalid training config: " + "; ".join(problems))

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in ``config.json`` and in provenance."""
        d = dataclasses.asdict(self)
        d["data"] = list(self.data)
        d["split_fractions"] = list(self.split_fractions)
        d["time_indices"] = list(self.time_indices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SymgradError(
                f"unknown training config keys {unknown}; known keys: {sorted(known)}"
            )
        return cls(**d)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Load a config file. Keys may sit at top level or under a ``[train]`` table."""
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise SymgradError(f"config file {path} does not exist; see experiments/*.toml") from None
        except tomllib.TOMLDecodeError as exc:
            raise SymgradError(f"config file {path} is not valid TOML: {exc}") from None
        raw = dict(raw.get("train", raw))
        # Relative data paths in a config file are relative to the working directory,
        # like those given on the command line.
        return cls.from_dict(raw)

    def with_overrides(self, **overrides) -> TrainConfig:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls_replace(self, given)

    # -- resume checks -----------------------------------------------------------------
    def material_differences(self, stored: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose change would make a resumed run not the continuation of ``stored``.

        Checkpoint cadence, progress display and logging, evaluation sizes, the data cache
        (the same values either way) and ``max_steps`` can change freely;
        ``epochs`` only matters when the learning-rate schedule depends on it.
        """
        free = {"checkpoint_every", "keep", "progress", "log_every", "max_steps", "eval_batch_size", "data_cache",
                "max_val_transitions", "rollout_trajectories"}
        if self.schedule == "constant" and stored.schedule == "constant":
            free.add("epochs")
        if self.model != "relaxed":  # only the relaxed model's loss has the relaxation penalty
            free.add("relaxation_weight")
        out = {}
        for f in fields(self):
            if f.name in free:
                continue
            new, old = getattr(self, f.name), getattr(stored, f.name)
            if new != old:
                out[f.name] = (old, new)
        return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Field annotation -> (check, what the message says it must be). Annotations are strings
# (``from __future__ import annotations``); every field's type is in this table.
_TYPE_CHECKS = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (_is_number, "a number"),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a table of settings"),
    "tuple[str, ...]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(p, (str, Path)) for p in v),
                        "a list of file paths"),
    "tuple[float, float, float]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3
                                   and all(_is_number(f) for f in v), "a list of 3 numbers"),
    "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in v), "a list of integers"),
}


def _check_types(config: TrainConfig) -> None:
    """Every field has its declared type (a TOML file can hold ``epochs = "two"``): one line
    naming each wrong field, before any range check or arithmetic sees the value."""
    problems = []
    for f in fields(config):
        check, expected = _TYPE_CHECKS[f.type]
        value = getattr(config, f.name)
        if not check(value):
            problems.append(f"{f.name} must be {expected}, got {value!r} ({type(value).__name__})")
    if problems:
        raise SymgradError("invalid training config: " + "; ".join(problems))


def cls_replace(config: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise SymgradError(f"unknown training config keys {unknown}")
    return dataclasses.replace(config, **changes)
