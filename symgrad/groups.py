"""Symmetry groups as pure functions on states (docs/design.md section 3).

States are arrays ``(..., nx, ny, 4)`` with channels ``(rho, m_x, m_y, E)``. Group elements
act *actively*: scalar fields move with the grid and the momentum vector moves **and
rotates**. Forgetting the rotation of the vector is the classic bug, caught by the test
that every element commutes with the Euler solver step.

D4 elements are ``r^k s^m`` (apply ``s^m`` first, then ``r^k``), with ``(ab).q = a.(b.q)``.

Two ways to apply an element:

- ``act_d4(name, q)``, ``translate(q, kx, ky)``, ``scale(q, a)`` and ``Group.act(element, q)``
  take the element as a static Python value (a name, a shift, a factor);
- ``Group.act_index(i, q)`` takes the *position* ``i`` of the element in ``Group.elements``
  and accepts a traced integer, so that one compiled program serves every element and
  ``jax.vmap`` can batch over elements (D4 through a gather table, shifts through a
  dynamic roll, factors through a lookup).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from symgrad.errors import SymgradError
from symgrad.names import DEFAULT_BOOST_SHIFTS, DEFAULT_SCALE_FACTORS, GROUPS

D4_ELEMENTS: tuple[str, ...] = ("e", "r", "r2", "r3", "s", "rs", "r2s", "r3s")
_NAME_TO_KS = {name: (i % 4, i // 4) for i, name in enumerate(D4_ELEMENTS)}
_KS_TO_NAME = {v: k for k, v in _NAME_TO_KS.items()}


def d4_parts(name: str) -> tuple[int, int]:
    """``(k, m)`` with element ``= r^k s^m``."""
    try:
        return _NAME_TO_KS[name]
    except (KeyError, TypeError):
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


#: ``D4_COMPOSITION[a, b]`` is the index (in ``D4_ELEMENTS``) of ``ab``.
D4_COMPOSITION: np.ndarray = np.array(
    [[D4_ELEMENTS.index(d4_compose(a, b)) for b in D4_ELEMENTS] for a in D4_ELEMENTS], dtype=np.int32
)
#: ``D4_INVERSE[a]`` is the index of ``a^-1``.
D4_INVERSE: np.ndarray = np.array([D4_ELEMENTS.index(d4_inverse(a)) for a in D4_ELEMENTS], dtype=np.int32)


def _rotation_matrix(k: int) -> np.ndarray:
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    return np.array([[c, -s], [s, c]], dtype=np.int32)


#: ``D4_MOMENTUM[g]`` is the 2x2 integer matrix that element ``g`` applies to ``(m_x, m_y)``.
D4_MOMENTUM: np.ndarray = np.stack(
    [_rotation_matrix(k) @ (np.diag([-1, 1]) if m else np.eye(2, dtype=np.int32))
     for k, m in (_NAME_TO_KS[n] for n in D4_ELEMENTS)]
).astype(np.int32)


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


@functools.lru_cache(maxsize=16)
def d4_source_indices(n: int) -> np.ndarray:
    """``(8, n*n)`` table: cell ``c`` of ``g.q`` (flattened ``i*n + j``) comes from cell
    ``table[g, c]`` of ``q``. The same index moves that ``act_d4`` performs, as a gather."""
    cells = np.arange(n * n, dtype=np.int32).reshape(n, n)
    table = []
    for name in D4_ELEMENTS:
        k, m = _NAME_TO_KS[name]
        moved = np.flip(cells, axis=0) if m else cells
        table.append(np.rot90(moved, k, axes=(0, 1)).reshape(-1))
    table = np.stack(table)
    table.setflags(write=False)
    return table


def act_d4_index(index: Int[Array, ""] | int, q: Float[Array, "*b n n 4"]) -> Float[Array, "*b n n 4"]:
    """Apply ``D4_ELEMENTS[index]``; ``index`` may be traced (jit/vmap over elements).

    Equals ``act_d4(D4_ELEMENTS[index], q)`` bit for bit: the cells are gathered, and the
    momentum is mixed by multiplications with 0 and +-1 (elementwise, not a matmul, so
    that no accelerator runs it at reduced precision).
    """
    nx, ny = q.shape[-3], q.shape[-2]
    if nx != ny:
        raise SymgradError(f"rotations need a square grid, got {nx}x{ny}")
    src = jnp.asarray(d4_source_indices(nx))[index]
    flat = q.reshape(*q.shape[:-3], nx * ny, 4)
    moved = jnp.take(flat, src, axis=-2, mode="clip").reshape(q.shape)
    mat = jnp.asarray(D4_MOMENTUM, dtype=q.dtype)[index]
    rho, mx, my, e = (moved[..., c] for c in range(4))
    mx, my = mat[0, 0] * mx + mat[0, 1] * my, mat[1, 0] * mx + mat[1, 1] * my
    return jnp.stack([rho, mx, my, e], axis=-1)


def translate(q: Float[Array, "*b nx ny 4"], kx: int = 0, ky: int = 0) -> Float[Array, "*b nx ny 4"]:
    """Periodic shift: ``s'[i, j] = s[(i - kx) mod nx, (j - ky) mod ny]``; vectors unchanged.

    ``kx``/``ky`` may be traced integers (a dynamic roll)."""
    return jnp.roll(q, (kx, ky), axis=(-3, -2))


def scale(q: Float[Array, "*b nx ny 4"], a: float) -> Float[Array, "*b nx ny 4"]:
    """Euler scaling ``(rho, m, E) -> (a rho, a m, a E)``: velocities and ``p/rho`` unchanged."""
    return q * jnp.asarray(a, dtype=q.dtype)


def boost(q: Float[Array, "*b nx ny 4"], cx=0.0, cy=0.0) -> Float[Array, "*b nx ny 4"]:
    """Galilean boost of a state at one time, cell by cell: ``u -> u + c``, ``rho`` and ``p``
    unchanged, i.e. ``m -> m + rho c`` and ``E -> E + m.c + rho |c|^2 / 2`` (linear in ``q``).

    ``cx``/``cy`` may be traced. The boosted *flow* also moves: ``q'(x, t) = B_c q(x - c t, t)``,
    so a state ``t`` later is ``translate(boost(q, c), c t / dx)`` (see :func:`boosts`)."""
    cx = jnp.asarray(cx, dtype=q.dtype)
    cy = jnp.asarray(cy, dtype=q.dtype)
    rho, mx, my, e = (q[..., c] for c in range(4))
    e = e + (mx * cx + my * cy) + 0.5 * rho * (cx * cx + cy * cy)
    return jnp.stack([rho, mx + rho * cx, my + rho * cy, e], axis=-1)


@dataclass(frozen=True)
class Group:
    """A finite set of group elements with their action, as the diagnostics see it.

    ``elements`` are the coordinate values written to result files (strings for D4,
    integer shifts for translations, float factors for scaling); ``act(element, q)``
    applies one element given by its value; ``act_index(i, q)`` applies
    ``elements[i]`` with ``i`` possibly traced.

    ``compose``/``inverse``/``identity`` describe the group law on element values (for
    translations modulo the resolution, for scaling the positive reals, of which
    ``elements`` is a finite sample and so need not be closed).
    """

    name: str
    elements: tuple
    act: Callable[[object, Array], Array]
    element_long_name: str
    invariant_loss: bool  # whether SMSE is invariant under every element
    element_units: str | None = None  # CF units of the element coordinate (None for names)
    act_at: Callable[[Array, Array], Array] | None = None  # traced-index action, see act_index
    compose: Callable[[object, object], object] | None = None  # value of ab (b acts first)
    inverse: Callable[[object], object] | None = None
    identity: object = None
    # The action on targets and model outputs where it differs from ``act`` (boosts: the
    # state one step later is boosted *and* translated); None: the same as on inputs.
    act_target: Callable[[object, Array], Array] | None = None
    act_target_at: Callable[[Array, Array], Array] | None = None
    # Extra CF attributes of the ``element`` coordinate, as ``(name, value)`` pairs (hashable)
    element_attrs: tuple = ()

    def __len__(self) -> int:
        return len(self.elements)

    def index(self, element) -> int:
        """Position of an element value in ``elements``."""
        try:
            return self.elements.index(element)
        except ValueError:
            raise SymgradError(f"{element!r} is not an element of group {self.name!r}") from None

    def act_index(self, i: Int[Array, ""] | int, q: Float[Array, "*b nx ny 4"]) -> Float[Array, "*b nx ny 4"]:
        """Apply ``elements[i]``; ``i`` may be a traced integer."""
        if self.act_at is not None:
            return self.act_at(i, q)
        # Fallback for a group built without a traced action: one branch per element
        # (under vmap every branch runs, so prefer providing act_at for large groups).
        branches = [functools.partial(self.act, g) for g in self.elements]
        return jax.lax.switch(jnp.asarray(i, dtype=jnp.int32), branches, q)

    @property
    def same_target_action(self) -> bool:
        """Whether targets and outputs transform as inputs do (every group but the boosts)."""
        return self.act_target is None

    def target(self, element, q: Float[Array, "*b nx ny 4"]) -> Float[Array, "*b nx ny 4"]:
        """Apply one element (by value) to a target or a model output: the state one step
        after an input acted on by ``act``."""
        return self.act(element, q) if self.act_target is None else self.act_target(element, q)

    def target_index(self, i: Int[Array, ""] | int, q: Float[Array, "*b nx ny 4"]) -> Float[Array, "*b nx ny 4"]:
        """``target(elements[i], q)`` with ``i`` possibly traced."""
        if self.act_target is None:
            return self.act_index(i, q)
        if self.act_target_at is not None:
            return self.act_target_at(i, q)
        branches = [functools.partial(self.act_target, g) for g in self.elements]
        return jax.lax.switch(jnp.asarray(i, dtype=jnp.int32), branches, q)

    def composition_table(self) -> np.ndarray:
        """``table[a, b]`` = position of ``elements[a] elements[b]``, or -1 where the
        product lies outside the element set (possible for scaling or a partial stride)."""
        if self.compose is None:
            raise ValueError(f"group {self.name!r} has no composition law")
        n = len(self.elements)
        table = np.full((n, n), -1, dtype=np.int64)
        for a, ga in enumerate(self.elements):
            for b, gb in enumerate(self.elements):
                ab = self.compose(ga, gb)
                for c, gc in enumerate(self.elements):
                    if _same_element(ab, gc):
                        table[a, b] = c
                        break
        return table


def _same_element(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=0.0))
    return a == b


GROUP_NAMES = GROUPS


def d4_group() -> Group:
    """D4 on the square grid: elements ``D4_ELEMENTS``, composition ``D4_COMPOSITION``."""
    return Group(
        "d4", D4_ELEMENTS, act_d4, "D4 element (r: rotation by pi/2, s: x-reflection)", True,
        element_units=None, act_at=act_d4_index, compose=d4_compose, inverse=d4_inverse, identity="e",
    )


def translations(resolution: int, axis: str = "x", stride: int = 1) -> Group:
    """Periodic shifts ``0, stride, 2 stride, ... < resolution`` along ``axis`` ("x" or "y").

    The law is addition modulo ``resolution``; the element set is closed when ``stride``
    divides ``resolution``."""
    if axis not in ("x", "y"):
        raise SymgradError(f"translation axis must be 'x' or 'y', got {axis!r}")
    if resolution is None or int(resolution) < 1:
        raise SymgradError(f"translations need a positive grid resolution, got {resolution!r}")
    if int(stride) < 1:
        raise SymgradError(f"translation stride must be >= 1, got {stride}")
    n = int(resolution)
    shifts = tuple(int(k) for k in np.arange(0, n, int(stride)))
    table = np.asarray(shifts, dtype=np.int32)
    if axis == "x":
        act = lambda k, q: translate(q, kx=int(k))  # noqa: E731
        act_at = lambda i, q: translate(q, kx=jnp.asarray(table)[i])  # noqa: E731
    else:
        act = lambda k, q: translate(q, ky=int(k))  # noqa: E731
        act_at = lambda i, q: translate(q, ky=jnp.asarray(table)[i])  # noqa: E731
    return Group(
        f"translate-{axis}", shifts, act, f"periodic shift along {axis} in grid cells", True,
        element_units="1", act_at=act_at,
        compose=lambda a, b: (a + b) % n, inverse=lambda a: (-a) % n, identity=0,
    )


def scalings(factors: Sequence[float] = DEFAULT_SCALE_FACTORS) -> Group:
    """Euler scaling ``(rho, m, E) -> a (rho, m, E)`` for the given factors ``a > 0``."""
    try:
        fs = tuple(float(f) for f in factors)
    except (TypeError, ValueError):
        raise SymgradError(f"scaling factors must be numbers, got {factors!r}") from None
    if not fs or any(not np.isfinite(f) or f <= 0 for f in fs):
        raise SymgradError(f"scaling factors must be positive and finite (and at least one), got {fs}")
    table = np.asarray(fs)
    return Group(
        "scale", fs, lambda a, q: scale(q, a), "Euler scaling factor a: (rho, m, E) -> a (rho, m, E)", False,
        element_units="1", act_at=lambda i, q: q * jnp.asarray(table, dtype=q.dtype)[i],
        compose=lambda a, b: a * b, inverse=lambda a: 1.0 / a, identity=1.0,
    )


def boost_speed(shift: int, resolution: int, time_step: float) -> float:
    """The boost velocity ``c = k dx / dt`` that moves the flow ``k`` whole cells per step."""
    return float(shift) / (float(resolution) * float(time_step))


def boosts(resolution: int, time_step: float, axis: str = "x", shifts: Sequence[int] = DEFAULT_BOOST_SHIFTS) -> Group:
    """Galilean boosts along ``axis`` that are exact on the grid over one step ``time_step``.

    Element ``k`` (of ``shifts``) is the velocity ``c = k dx / dt`` (``dx = 1 / resolution``),
    whose flow moves ``c dt = k`` whole cells per step. The elements are the velocities; the
    shifts are the coordinate attribute ``shift_cells``. On inputs an element acts as
    ``B_c`` (:func:`boost`); on targets and model outputs, one step later, as
    ``T_{c dt} B_c = translate(boost(q, c), k)``. Both are representations of the additive
    group of shifts (``B_c1 B_c2 = B_{c1 + c2}``, ``T`` commutes with ``B``); the element set
    need not be closed (``1 + 1`` is outside ``(-1, 0, 1)``), as for scaling.

    SMSE is not invariant under a boost (it adds ``rho c`` to the momentum)."""
    if axis not in ("x", "y"):
        raise SymgradError(f"boost axis must be 'x' or 'y', got {axis!r}")
    if resolution is None or not isinstance(resolution, (int, np.integer)) or int(resolution) < 1:
        raise SymgradError(f"boosts need a square grid of n x n cells (n >= 1), got resolution {resolution!r}")
    try:
        dt = float(time_step)
    except (TypeError, ValueError):
        dt = float("nan")
    if not (np.isfinite(dt) and dt > 0):
        raise SymgradError(f"boosts need the data's time step between stored states (> 0), got {time_step!r}")
    try:
        ks = tuple(int(k) for k in shifts)
    except (TypeError, ValueError):
        raise SymgradError(f"boost shifts must be whole numbers of cells, got {shifts!r}") from None
    if not ks or len(set(ks)) != len(ks) or any(float(k) != float(s) for k, s in zip(ks, shifts)):
        raise SymgradError(f"boost shifts must be distinct whole numbers of cells (at least one), got {tuple(shifts)}")
    n = int(resolution)
    speeds = tuple(boost_speed(k, n, dt) for k in ks)
    unit = 1.0 / (n * dt)  # the velocity of a one-cell shift
    shift_table = np.asarray(ks, dtype=np.int32)
    speed_table = np.asarray(speeds, dtype=np.float64)
    along = (lambda c: (c, 0.0)) if axis == "x" else (lambda c: (0.0, c))  # noqa: E731
    kx, ky = (1, 0) if axis == "x" else (0, 1)

    def shift_of(c) -> int:
        return int(round(float(c) / unit))

    def act(c, q):
        return boost(q, *along(float(c)))

    def act_target(c, q):
        k = shift_of(c)
        return translate(boost(q, *along(float(c))), kx * k, ky * k)

    def act_at(i, q):
        return boost(q, *along(jnp.asarray(speed_table, dtype=q.dtype)[i]))

    def act_target_at(i, q):
        k = jnp.asarray(shift_table)[i]
        return translate(act_at(i, q), kx * k, ky * k)

    return Group(
        f"boost-{axis}", speeds, act, f"Galilean boost velocity along {axis} (c = k dx / dt)", False,
        element_units="1", act_at=act_at,
        compose=lambda a, b: unit * (shift_of(a) + shift_of(b)), inverse=lambda a: unit * (-shift_of(a)),
        identity=0.0, act_target=act_target, act_target_at=act_target_at,
        element_attrs=(("shift_cells", ks), ("time_step", dt), ("resolution", n),
                       ("comment", "element k moves the flow k whole cells per time step: c = k / (resolution "
                                   "time_step); on targets and outputs it acts as the boost followed by that shift")),
    )


def named_group(
    name: str,
    resolution: int | None = None,
    *,
    stride: int = 1,
    factors: Sequence[float] = DEFAULT_SCALE_FACTORS,
    time_step: float | None = None,
    shifts: Sequence[int] = DEFAULT_BOOST_SHIFTS,
) -> Group:
    """The CLI's named groups: ``d4``, ``translate-x``, ``translate-y``, ``scale``,
    ``boost-x``, ``boost-y``.

    Translations default to every shift ``0, stride, 2 stride, ... < resolution``; boosts
    need the resolution and the data's ``time_step`` between stored states, and take the
    ``shifts`` in cells per step.
    """
    if name == "d4":
        return d4_group()
    if name in ("translate-x", "translate-y"):
        if resolution is None:
            raise SymgradError(f"group {name!r} needs the grid resolution")
        return translations(resolution, name[-1], stride)
    if name == "scale":
        return scalings(factors)
    if name in ("boost-x", "boost-y"):
        if resolution is None or time_step is None:
            raise SymgradError(f"group {name!r} needs the grid resolution and the data's time step")
        return boosts(resolution, time_step, name[-1], shifts)
    raise SymgradError(f"unknown group {name!r}; choose one of: {', '.join(GROUP_NAMES)}")
