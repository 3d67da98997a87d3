"""Symmetry groups as pure functions on states (DESIGN.md section 3).

States are arrays ``(..., nx, ny, 4)`` with channels ``(rho, m_x, m_y, E)``. Group elements
act *actively*: scalar fields move with the grid and the momentum vector moves **and
rotates**. Forgetting the rotation of the vector is the classic bug, caught by the test
that every element commutes with the Euler solver step.

D4 elements are ``r^k s^m`` (apply ``s^m`` first, then ``r^k``), with ``(ab).q = a.(b.q)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from symgrad.errors import SymgradError

D4_ELEMENTS: tuple[str, ...] = ("e", "r", "r2", "r3", "s", "rs", "r2s", "r3s")
_NAME_TO_KS = {name: (i % 4, i // 4) for i, name in enumerate(D4_ELEMENTS)}
_KS_TO_NAME = {v: k for k, v in _NAME_TO_KS.items()}


def d4_parts(name: str) -> tuple[int, int]:
    """``(k, m)`` with element ``= r^k s^m``."""
    try:
        return _NAME_TO_KS[name]
    except KeyError:
        raise SymgradError(
            f"unknown D4 element {name!r}; the elements are {', '.join(D4_ELEMENTS)}"
        ) from None


def d4_compose(a: str, b: str) -> str:
    """The name of ``ab`` (act with b first). Uses ``s r = r^-1 s``."""
    ka, ma = d4_parts(a)
    kb, mb = d4_parts(b)
    k = (ka + (kb if ma == 0 else -kb)) % 4
    return _KS_TO_NAME[(k, (ma + mb) % 2)]


def d4_inverse(a: str) -> str:
    k, m = d4_parts(a)
    # Reflections are involutions; rotations invert to r^-k.
    return a if m == 1 else _KS_TO_NAME[((-k) % 4, 0)]


def rotate90(q: Float[Array, "*b nx ny 4"], k: int = 1) -> Float[Array, "*b nx ny 4"]:
    """Counter-clockwise rotation by ``k * pi/2``: ``s'[i, j] = s[j, n-1-i]`` per quarter turn."""
    k = k % 4
    if k == 0:
        return q
    if q.shape[-3] != q.shape[-2]:
        raise SymgradError(f"rotations need a square grid, got {q.shape[-3]}x{q.shape[-2]}")
    moved = jnp.rot90(q, k, axes=(-3, -2))
    rho, mx, my, e = (moved[..., c] for c in range(4))
    # R(pi/2) (m_x, m_y) = (-m_y, m_x), applied k times.
    if k == 1:
        mx, my = -my, mx
    elif k == 2:
        mx, my = -mx, -my
    else:
        mx, my = my, -mx
    return jnp.stack([rho, mx, my, e], axis=-1)


def reflect_x(q: Float[Array, "*b nx ny 4"]) -> Float[Array, "*b nx ny 4"]:
    """Reflection x -> -x about the domain centre: ``s'[i, j] = s[n-1-i, j]``, ``m_x -> -m_x``."""
    flipped = jnp.flip(q, axis=-3)
    return flipped * jnp.asarray([1, -1, 1, 1], dtype=q.dtype)


def act_d4(name: str, q: Float[Array, "*b nx ny 4"]) -> Float[Array, "*b nx ny 4"]:
    k, m = d4_parts(name)
    if m:
        q = reflect_x(q)
    return rotate90(q, k)


def translate(q: Float[Array, "*b nx ny 4"], kx: int = 0, ky: int = 0) -> Float[Array, "*b nx ny 4"]:
    """Periodic shift: ``s'[i, j] = s[(i - kx) mod nx, (j - ky) mod ny]``; vectors unchanged."""
    return jnp.roll(q, (kx, ky), axis=(-3, -2))


def scale(q: Float[Array, "*b nx ny 4"], a: float) -> Float[Array, "*b nx ny 4"]:
    """Euler scaling ``(rho, m, E) -> (a rho, a m, a E)``: velocities and ``p/rho`` unchanged."""
    return q * jnp.asarray(a, dtype=q.dtype)


@dataclass(frozen=True)
class Group:
    """A finite set of group elements with their action, as the diagnostics see it.

    ``elements`` are the coordinate values written to result files (strings for D4,
    integer shifts for translations, float factors for scaling); ``dim`` names that
    coordinate's dimension semantics; ``act(element, q)`` applies one element.
    """

    name: str
    elements: tuple
    act: Callable[[object, Array], Array]
    element_long_name: str
    invariant_loss: bool  # whether SMSE is invariant under every element

    def __len__(self) -> int:
        return len(self.elements)


GROUP_NAMES = ("d4", "translate-x", "translate-y", "scale")
DEFAULT_SCALE_FACTORS = (0.5, 0.8, 1.0, 1.25, 2.0)


def named_group(
    name: str,
    resolution: int | None = None,
    *,
    stride: int = 1,
    factors: Sequence[float] = DEFAULT_SCALE_FACTORS,
) -> Group:
    """The CLI's named groups: ``d4``, ``translate-x``, ``translate-y``, ``scale``.

    Translations default to every shift ``0, stride, 2 stride, ... < resolution``.
    """
    if name == "d4":
        return Group("d4", D4_ELEMENTS, act_d4, "D4 element (r: rotation by pi/2, s: x-reflection)", True)
    if name in ("translate-x", "translate-y"):
        if resolution is None:
            raise SymgradError(f"group {name!r} needs the grid resolution")
        if stride < 1:
            raise SymgradError(f"translation stride must be >= 1, got {stride}")
        shifts = tuple(int(k) for k in np.arange(0, resolution, stride))
        if name == "translate-x":
            act = lambda k, q: translate(q, kx=int(k))  # noqa: E731
        else:
            act = lambda k, q: translate(q, ky=int(k))  # noqa: E731
        axis = name[-1]
        return Group(name, shifts, act, f"periodic shift along {axis} in cells", True)
    if name == "scale":
        fs = tuple(float(f) for f in factors)
        if any(not np.isfinite(f) or f <= 0 for f in fs):
            raise SymgradError(f"scaling factors must be positive and finite, got {fs}")
        return Group("scale", fs, lambda a, q: scale(q, a), "Euler scaling factor a: (rho, m, E) -> a (rho, m, E)", False)
    raise SymgradError(f"unknown group {name!r}; choose one of: {', '.join(GROUP_NAMES)}")
