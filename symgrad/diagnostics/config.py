"""One frozen settings object per diagnostic, checked once, carried from the flag to the solver.

``OverlapConfig``, ``EquivarianceConfig`` and ``SpectrumConfig`` hold what a diagnostic
*computes with* (not which run, data or samples it reads: that is ``symgrad.inputs``). Each
field made with ``_setting`` is also a flag of its command (``--field-name``, or the
``flag`` given), with this help and this shown default: ``symgrad.commands._settings``
derives the flags from the fields, as ``symgrad train`` does from ``TrainConfig``.

Every check of a setting is in ``__post_init__`` and nowhere else. A failed check raises
``SettingError``, whose message names the *fields*; the command line shows the same
message with the flags instead (``SettingError.message(name_of)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from symgrad import names
from symgrad.errors import SettingError, SymgradError


def _setting(default, help: str, *, flag: str | None = None, shown: str | None = None, **argparse_kwargs):
    """A field that is also a flag: ``--field-name`` (or ``flag``), with this help; its default
    is shown from the field, or as ``shown`` where the command fills it in (the run's)."""
    return field(default=default, metadata={"help": help, "flag": flag, "shown": shown, **argparse_kwargs})


def _positive_int(config, *names_) -> None:
    for name in names_:
        value = getattr(config, name)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise SettingError(f"{{{name}}} must be an integer >= 1, got {value!r}")


def _choice(config, name: str, choices) -> None:
    if getattr(config, name) not in choices:
        raise SettingError(f"unknown {{{name}}} {getattr(config, name)!r}; choose one of {', '.join(map(str, choices))}")


class _Settings:
    """What the three configs share: a plain dict for provenance and fingerprints."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class OverlapConfig(_Settings):
    """How ``compute_overlaps`` / ``symgrad overlap`` computes (docs/overlap.md)."""

    metric: str = _setting("both", "which overlaps to compute (chi also yields the Euclidean ones)",
                           choices=names.METRICS)
    damping: float = _setting(1e-6, "lambda of chi = (lambda I + G)^-1", metavar="L", shown="the run's weight decay")
    rtol: float = _setting(names.DEFAULT_RTOL, "requested relative accuracy of every chi value")
    solver: str = _setting(names.DEFAULT_SOLVER, (
        "block: one block Lanczos space for every right-hand side, Gauss-Radau stopping (the fast path); "
        "cg: independent CG per right-hand side with the residual rule (the part-1 baseline); "
        "dense: forms G, exact reference for small models"), choices=names.SOLVERS)
    max_iterations: int = _setting(names.DEFAULT_MAX_ITERATIONS,
                                   "solver iterations at most (block steps, or CG steps per right-hand side)",
                                   metavar="K")
    curvature_samples: int | None = _setting(None, "curvature batch: the first B of the N samples", metavar="B",
                                             shown="all N")
    rhs_chunk: int | None = _setting(None, "right-hand sides solved together, bounding memory (below 2 N the v's "
                                     "are solved first and elements are split by rows)", metavar="K",
                                     shown="the memory plan's")
    basis_memory: float | None = _setting(None, "GB of Lanczos vectors kept for reorthogonalisation", metavar="GB",
                                          shown="what the memory plan leaves")
    deflation_vectors: int | None = _setting(None, "Lanczos vectors the first chunk keeps, with their products, so "
                                             "that their Ritz vectors deflate every later chunk (0: none); they "
                                             "pay where the Lanczos basis cannot be stored whole", metavar="K",
                                             shown="the memory plan's: none when the whole basis fits")
    product_chunk: int | None = _setting(None, "vectors per vmapped Gauss-Newton product, bounding activation "
                                         "memory on big models", metavar="V", shown="the memory plan's")
    grad_chunk: int = _setting(names.DEFAULT_GRAD_CHUNK, "per-example gradients computed C at a time (bounds memory)",
                               metavar="C")
    probe_vectors: int = _setting(names.DEFAULT_PROBE_VECTORS,
                                  "random vectors of the spectrum probe stored with the result (0: no probe)",
                                  metavar="K")
    probe_steps: int = _setting(names.DEFAULT_PROBE_STEPS, "block Lanczos steps of that probe", flag="--lanczos-steps",
                                metavar="S")
    precision: str = _setting("float64", names.PRECISION_HELP, choices=names.PRECISIONS)
    devices: int | None = _setting(None, "devices the curvature batch is sharded over (the memory plan is per "
                                   "device)", metavar="D", shown="every device of this process")
    device_memory: str | None = _setting(None, "memory of each device to plan for, like 80GB (GB = GiB; XLA's "
                                         "pool, XLA_PYTHON_CLIENT_MEM_FRACTION or 0.75, of it is used)",
                                         metavar="SIZE", shown="what the device reports, or the host's free memory")

    def __post_init__(self):
        _choice(self, "metric", names.METRICS)
        _positive_int(self, "devices")
        if self.device_memory is not None:
            from symgrad.diagnostics.plan import parse_memory

            try:
                parse_memory(self.device_memory)
            except SymgradError:
                raise SettingError("cannot read {device_memory} {value!r}; write it like 80GB or 512MB",
                                   value=self.device_memory) from None
        _choice(self, "solver", names.SOLVERS)
        _choice(self, "precision", names.PRECISIONS)
        if self.wants_chi and not 0 < self.damping < math.inf:
            raise SettingError("the chi metric needs a finite {damping} lambda > 0, got {damping} {value:g}; set "
                               "{damping} > 0 (or {metric} euclidean)", value=self.damping)
        if not 0 < self.rtol < 1:
            raise SettingError("{rtol} must lie in (0, 1) (a relative accuracy such as 1e-6), got {value}",
                               value=self.rtol)
        _positive_int(self, "max_iterations", "curvature_samples", "rhs_chunk", "product_chunk", "grad_chunk")
        if self.deflation_vectors is not None and not (isinstance(self.deflation_vectors, int)
                                                       and self.deflation_vectors >= 0):
            raise SettingError("{deflation_vectors} must be >= 0 (0: no deflation), got {value!r}",
                               value=self.deflation_vectors)
        if self.basis_memory is not None and not self.basis_memory >= 0:
            raise SettingError("{basis_memory} must be >= 0 GB, got {value}", value=self.basis_memory)
        if not (isinstance(self.probe_vectors, int) and self.probe_vectors >= 0):
            raise SettingError("{probe_vectors} must be >= 0 (0: no probe), got {value!r}", value=self.probe_vectors)
        _positive_int(self, "probe_steps")

    @property
    def wants_chi(self) -> bool:
        return self.metric in ("chi", "both")

    @property
    def basis_bytes(self) -> int | None:
        return None if self.basis_memory is None else int(self.basis_memory * 2**30)

    def chi_solver(self, basis_bytes: int | None = None):
        """The chi solver these settings name, with their step limit and the bytes of Lanczos
        vectors it may store (``basis_bytes``: the memory plan's; else ``basis_memory``)."""
        from symgrad.diagnostics.solvers import BlockLanczos, CG, Dense

        if self.solver == "block":
            return BlockLanczos(max_steps=self.max_iterations,
                                basis_bytes=self.basis_bytes if basis_bytes is None else int(basis_bytes))
        if self.solver == "cg":
            return CG(max_steps=self.max_iterations)
        return Dense()


@dataclass(frozen=True)
class EquivarianceConfig(_Settings):
    """How ``equivariance_errors`` / ``symgrad equivariance`` computes (docs/equivariance.md)."""

    eval_chunk: int = _setting(names.EVAL_CHUNK, "model evaluations per compiled call (bounds memory)", metavar="C")
    precision: str = _setting("float64", names.PRECISION_HELP, choices=names.PRECISIONS)

    def __post_init__(self):
        _positive_int(self, "eval_chunk")
        _choice(self, "precision", names.PRECISIONS)


@dataclass(frozen=True)
class SpectrumConfig(_Settings):
    """How ``symgrad spectrum`` probes G (``spectrum.probe_spectrum``, docs/overlap.md)."""

    probe_vectors: int = _setting(names.DEFAULT_PROBE_VECTORS, "random vectors of the spectrum probe (the block size)",
                                  metavar="K")
    probe_steps: int = _setting(names.DEFAULT_PROBE_STEPS, "block Lanczos steps (K x S products)",
                                flag="--lanczos-steps", metavar="S")
    probe_seed: int = _setting(0, "seed of the probe vectors")
    damping: float = _setting(1e-6, "lambda of chi = (lambda I + G)^-1 whose solve cost is predicted (0: none)",
                              metavar="L", shown="the run's weight decay")
    precision: str = _setting("float64", names.PRECISION_HELP, choices=names.PRECISIONS)

    def __post_init__(self):
        _positive_int(self, "probe_vectors", "probe_steps")
        _choice(self, "precision", names.PRECISIONS)
        if not 0 <= self.damping < math.inf:
            raise SettingError("{damping} must be finite and >= 0 (0: predict no solve), got {value}",
                               value=self.damping)


def checked(config, cls):
    """``config``, or ``cls()`` when None; anything else is refused in one line."""
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise SymgradError(f"the settings must be a {cls.__name__}, got {type(config).__name__} {config!r}; "
                           f"pass for example {cls.__name__}() with the fields to change")
    return config


def setting_fields(cls):
    """The fields of a config class that are also flags."""
    return [f for f in fields(cls) if "help" in f.metadata]
