"""The Euler scheme's settings as one immutable, hashable value (a static argument of the jitted solver).

Named ``EulerConfig``, not "solver", so as not to be confused with the chi solvers of the
overlap diagnostic (``symgrad.diagnostics.solvers``)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from symgrad.errors import SymgradError
from symgrad.names import LIMITERS, RECONSTRUCTIONS, RK_STAGES


@dataclass(frozen=True)
class EulerConfig:
    """Numerical settings of the finite-volume Euler solver.

    Attributes:
        gamma: ratio of specific heats of the ideal gas (> 1).
        cfl: Courant number of the unsplit update, ``dt = cfl / max((|u|+c)/dx + (|v|+c)/dy)``;
            in ``(0, 1]`` (SSP-RK with MUSCL-HLLC is stable up to about 0.5 in 2-D).
        limiter: ``"mc"`` (monotonised central) or ``"minmod"``.
        reconstruction: ``"primitive"`` (limit ``rho, u, v, p``) or ``"characteristic"``
            (limit the projections on the eigenvectors of the face-normal Jacobian).
        rk_stages: 2 or 3, the SSP Runge-Kutta scheme of Shu and Osher.
        max_steps: safety bound on the number of time steps between two output times; a
            trajectory that needs more is reported as failed instead of hanging the loop.
    """

    gamma: float = 1.4
    cfl: float = 0.4
    limiter: str = "mc"
    reconstruction: str = "primitive"
    rk_stages: int = 2
    max_steps: int = 1_000_000

    def __post_init__(self) -> None:
        if not (isinstance(self.gamma, numbers.Real) and math.isfinite(self.gamma) and self.gamma > 1.0):
            raise SymgradError(f"EulerConfig.gamma must be a finite number > 1, got {self.gamma!r}")
        if not (isinstance(self.cfl, numbers.Real) and 0.0 < self.cfl <= 1.0):
            raise SymgradError(f"EulerConfig.cfl must be in (0, 1] (0.4 is the default), got {self.cfl!r}")
        if self.limiter not in LIMITERS:
            raise SymgradError(f"EulerConfig.limiter must be one of {LIMITERS}, got {self.limiter!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise SymgradError(
                f"EulerConfig.reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}"
            )
        if self.rk_stages not in RK_STAGES or isinstance(self.rk_stages, bool):
            raise SymgradError(f"EulerConfig.rk_stages must be 2 or 3, got {self.rk_stages!r}")
        if not (isinstance(self.max_steps, numbers.Integral) and self.max_steps >= 1):
            raise SymgradError(f"EulerConfig.max_steps must be a positive integer, got {self.max_steps!r}")
        # Normalise types (values may come back from file attributes as NumPy scalars) so that
        # equal settings hash equally: the config is a static argument of the jitted solver.
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "cfl", float(self.cfl))
        object.__setattr__(self, "limiter", str(self.limiter))
        object.__setattr__(self, "reconstruction", str(self.reconstruction))
        object.__setattr__(self, "rk_stages", int(self.rk_stages))
        object.__setattr__(self, "max_steps", int(self.max_steps))

    def to_dict(self) -> dict:
        """JSON-able settings, e.g. for file attributes and provenance."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EulerConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SymgradError(f"unknown Euler settings {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)
