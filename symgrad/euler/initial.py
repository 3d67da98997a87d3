"""Random initial conditions of the PDEGym compressible-Euler families (Herde et al. 2024).

All three families share one construction on the periodic unit square:

1. ``p`` interfaces in x and ``p`` in y cut the torus into ``p x p`` regions (default
   ``p = 2``: four "quadrants", one of which wraps around the boundary). Interface ``k`` sits
   at ``(k + 1/2 + xi_k) / p`` with ``xi_k ~ U[-jitter, jitter]``.
2. Interfaces are bent by sums of sinusoids of the other coordinate,
   ``x = a_k + sum_m A_{k,m} sin(2 pi m y + phi_{k,m})`` (no modes for CE-RP, a few
   large ones for CE-CRP, many small ones for CE-RPUI).
3. Each region gets an independent constant state ``rho ~ U[rho_range]``,
   ``p ~ U[pressure_range]``, ``(u, v) ~ U[-velocity_max, velocity_max]^2``.
4. With ``symmetrize=True`` (default) the sampled pattern is acted on by a uniformly random
   D4 element and then shifted by a uniformly random periodic grid translation.

Step 4 makes the distribution invariant under the whole symmetry group of the grid
(translations and D4 generate a finite group ``G``; every element is uniquely ``t d`` and
``(t d) x`` with ``t, d`` uniform is a uniform element of ``G`` applied to ``x``, whose law is
left-``G``-invariant). See ``docs/initial-conditions.md``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from symgrad.errors import SymgradError
from symgrad.euler.conversions import primitive_to_conservative
from symgrad.groups import act_d4
from symgrad.names import FAMILIES


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class RiemannConfig:
    """Settings shared by the families (straight interfaces by default); each family sets its
    own state ranges below.

    partitions: ``p``, regions per direction (``p x p`` constant states).
    jitter: interface ``k`` at ``(k + 1/2 + U[-jitter, jitter]) / p``; must be < 1/2.
    rho_range, pressure_range: uniform ranges of density and pressure (positive).
    velocity_max: each velocity component ~ ``U[-velocity_max, velocity_max]``.
    n_modes: sinusoidal modes ``m = 1 .. n_modes`` bending each interface.
    amplitude: bound on the total displacement of an interface; mode amplitudes are
        ``A_m ~ U[-1, 1] * amplitude / n_modes`` so ``|sum_m A_m sin(...)| <= amplitude``.
        Must satisfy ``amplitude < (1/2 - jitter) / p`` so interfaces never touch.
    symmetrize: apply a random D4 element and a random periodic shift (keeps the law
        invariant under D4 and translations; switch off only to study the raw pattern).
    """

    partitions: int = 2
    jitter: float = 0.25
    rho_range: tuple[float, float] = (0.1, 1.0)
    pressure_range: tuple[float, float] = (0.1, 1.0)
    velocity_max: float = 1.0
    n_modes: int = 0
    amplitude: float = 0.0
    symmetrize: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not (_is_int(self.partitions) and self.partitions >= 1):
            raise SymgradError(f"{name}.partitions must be a positive integer, got {self.partitions!r}")
        if not 0.0 <= self.jitter < 0.5:
            raise SymgradError(f"{name}.jitter must be in [0, 0.5), got {self.jitter!r}")
        for field in ("rho_range", "pressure_range"):
            lo, hi = getattr(self, field)
            if not (0.0 < lo <= hi and math.isfinite(hi)):
                raise SymgradError(f"{name}.{field} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
            object.__setattr__(self, field, (float(lo), float(hi)))
        if not (math.isfinite(self.velocity_max) and self.velocity_max >= 0.0):
            raise SymgradError(f"{name}.velocity_max must be >= 0, got {self.velocity_max!r}")
        if not (_is_int(self.n_modes) and self.n_modes >= 0):
            raise SymgradError(f"{name}.n_modes must be an integer >= 0, got {self.n_modes!r}")
        object.__setattr__(self, "partitions", int(self.partitions))
        object.__setattr__(self, "n_modes", int(self.n_modes))
        limit = (0.5 - self.jitter) / self.partitions
        if not 0.0 <= self.amplitude < limit:
            raise SymgradError(
                f"{name}.amplitude must be in [0, (1/2 - jitter)/partitions) = [0, {limit:.4g}) so that "
                f"interfaces cannot cross, got {self.amplitude!r}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The state ranges of the three families, fitted to the published PDEGym data: the density
# and velocity ranges match the mean and spread of Poseidon's shared normalisation
# constants, and each family's pressure range has its published mean pressure
# (docs/initial-conditions.md, "Ranges"; docs/reproduction.md section 6 for the comparison).
_PDEGYM_RHO = (0.26, 1.34)  # mean 0.80, std 0.31
_PDEGYM_VELOCITY = 0.65  # std 0.375, between the published 0.391 (u) and 0.356 (v)


@dataclass(frozen=True)
class RPConfig(RiemannConfig):
    """CE-RP: random constant states on a ``p x p`` partition with straight interfaces."""

    rho_range: tuple[float, float] = _PDEGYM_RHO
    pressure_range: tuple[float, float] = (0.1, 0.33)  # mean 0.215
    velocity_max: float = _PDEGYM_VELOCITY


@dataclass(frozen=True)
class CRPConfig(RiemannConfig):
    """CE-CRP: interfaces bent by a few sinusoids of large amplitude."""

    jitter: float = 0.15
    n_modes: int = 3
    amplitude: float = 0.12
    rho_range: tuple[float, float] = _PDEGYM_RHO
    pressure_range: tuple[float, float] = (0.1, 1.0)  # mean 0.55
    velocity_max: float = _PDEGYM_VELOCITY


@dataclass(frozen=True)
class RPUIConfig(RiemannConfig):
    """CE-RPUI: interfaces with small multi-mode perturbations (Kelvin-Helmholtz-like seeds)."""

    n_modes: int = 10
    amplitude: float = 0.06
    rho_range: tuple[float, float] = _PDEGYM_RHO
    pressure_range: tuple[float, float] = (0.66, 2.0)  # mean 1.33
    velocity_max: float = _PDEGYM_VELOCITY


DEFAULT_CONFIGS = {"CE-RP": RPConfig(), "CE-CRP": CRPConfig(), "CE-RPUI": RPUIConfig()}


def default_config(family: str) -> RiemannConfig:
    try:
        return DEFAULT_CONFIGS[family]
    except KeyError:
        raise SymgradError(f"unknown initial-condition family {family!r}; choose one of {', '.join(FAMILIES)}") from None


class _Uniforms:
    """Hands out consecutive slices of one vector of U[0, 1) draws.

    A single ``jax.random.uniform`` call per sample keeps the compiled sampler small (each
    call instantiates the threefry hash, which is slow to compile on CPU).
    """

    def __init__(self, u):
        self.u, self.pos = u, 0

    def take(self, shape, low=0.0, high=1.0):
        size = math.prod(shape)
        out = self.u[self.pos : self.pos + size].reshape(shape)
        self.pos += size
        return low + (high - low) * out


def _n_uniforms(config: RiemannConfig) -> int:
    p, m = config.partitions, config.n_modes
    return 2 * (p + 2 * p * m) + 4 * p * p + 3


def _interfaces(draw: _Uniforms, config: RiemannConfig, along):
    """Positions ``(p, n)`` of the ``p`` interfaces as functions of the other coordinate."""
    p, m = config.partitions, config.n_modes
    base = (jnp.arange(p) + 0.5 + draw.take((p,), -config.jitter, config.jitter)) / p
    amp = draw.take((p, m), -1.0, 1.0) * (config.amplitude / max(m, 1))
    phase = draw.take((p, m), 0.0, 2.0 * math.pi)
    if m == 0:
        return jnp.broadcast_to(base[:, None], (p, along.shape[0]))
    modes = jnp.arange(1, m + 1)
    arg = 2.0 * jnp.pi * modes[None, :, None] * along[None, None, :] + phase[..., None]
    return base[:, None] + (amp[..., None] * jnp.sin(arg)).sum(axis=1)


def _region_index(coord, interfaces, p):
    # Number of interfaces at or left of the point; mod p glues the first and last region.
    return (coord >= interfaces).sum(axis=0) % p


def _sample_pattern(draw: _Uniforms, n: int, config: RiemannConfig, gamma: float):
    """One unsymmetrised sample, conservative ``(n, n, 4)``."""
    p = config.partitions
    centres = (jnp.arange(n) + 0.5) / n
    x_if = _interfaces(draw, config, centres)  # (p, ny): x-interfaces as functions of y
    y_if = _interfaces(draw, config, centres)  # (p, nx): y-interfaces as functions of x
    ix = _region_index(centres[None, :, None], x_if[:, None, :], p)  # (nx, ny)
    iy = _region_index(centres[None, None, :], y_if[:, :, None], p)  # (nx, ny)
    rho = draw.take((p, p), *config.rho_range)
    pres = draw.take((p, p), *config.pressure_range)
    vel = draw.take((2, p, p), -config.velocity_max, config.velocity_max)
    return primitive_to_conservative(rho[ix, iy], vel[0][ix, iy], vel[1][ix, iy], pres[ix, iy], gamma)


def _symmetrize(draw: _Uniforms, q):
    """A uniformly random D4 element, then a uniformly random periodic shift."""
    n = q.shape[0]
    g = jnp.minimum(jnp.floor(draw.take(()) * 8), 7).astype(jnp.int32)
    k, m = g % 4, g // 4  # element r^k s^m, as in symgrad.groups.D4_ELEMENTS
    # Apply s^m, then r^k as r^(k mod 2) then r^(2 (k // 2)): four candidate arrays, not eight.
    q = jnp.where(m == 1, act_d4("s", q), q)
    q = jnp.where(k % 2 == 1, act_d4("r", q), q)
    q = jnp.where(k // 2 == 1, act_d4("r2", q), q)
    shift = jnp.minimum(jnp.floor(draw.take((2,)) * n), n - 1).astype(jnp.int32)
    return jnp.roll(q, (shift[0], shift[1]), axis=(0, 1))


def sample_initial(
    family: str,
    key: PRNGKeyArray,
    n: int,
    resolution: int,
    config: RiemannConfig | None = None,
    gamma: float = 1.4,
) -> Float[Array, "n resolution resolution 4"]:
    """``n`` initial states of ``family`` on a ``resolution x resolution`` grid, conservative.

    Deterministic in ``key``; sample ``b`` depends only on ``fold_in(key, b)``, so a prefix of
    a larger draw equals a smaller draw (chunked generation can resume). Point values at cell
    centres; float32 unless x64 is enabled.
    """
    config = default_config(family) if config is None else config
    if family not in FAMILIES:
        default_config(family)  # raises the error naming the families
    if not isinstance(config, RiemannConfig):
        raise SymgradError(f"config must be one of RPConfig, CRPConfig, RPUIConfig, got {type(config).__name__}")
    if not (_is_int(n) and n >= 0):
        raise SymgradError(f"number of samples must be an integer >= 0, got {n!r}")
    if not (_is_int(resolution) and resolution >= 2 * config.partitions):
        raise SymgradError(f"resolution must be an integer >= 2 * partitions, got {resolution!r}")
    if not gamma > 1.0:
        raise SymgradError(f"gamma must be > 1, got {gamma!r}")
    return _sample_batch(key, int(n), int(resolution), config, float(gamma))


@jax.jit
def _fold(key, n_idx):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(n_idx)


def _sample_one(key, resolution, config, gamma):
    draw = _Uniforms(jax.random.uniform(key, (_n_uniforms(config),)))
    q = _sample_pattern(draw, resolution, config, gamma)
    sym = _symmetrize(draw, q)  # always drawn, so symmetrize=False changes nothing else
    return sym if config.symmetrize else q


_sample_many = jax.jit(
    jax.vmap(_sample_one, in_axes=(0, None, None, None)), static_argnums=(1, 2, 3)
)


def _sample_batch(key, n, resolution, config, gamma):
    keys = _fold(key, jnp.arange(n, dtype=jnp.uint32))
    return _sample_many(keys, resolution, config, gamma)
