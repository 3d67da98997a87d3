"""Index bookkeeping of the p4m group convolution: how D4 acts on filters and fields.

Conventions are those of :mod:`symgrad.groups` (docs/design.md section 3), so that a network
built from these pieces is equivariant under exactly ``symgrad.groups.act_d4``:

- element index ``i = k + 4 m`` names ``r^k s^m`` (the order of ``D4_ELEMENTS``);
  ``r^k s^m`` acts by reflecting first (flip of spatial axis 0) and rotating second
  (``rot90(., k)`` on spatial axes (0, 1));
- a *regular* feature field stores one value per group element on a trailing group axis
  of length 8, laid out channel-major: flat channel ``c * 8 + h``. The group acts by
  moving the field and permuting that axis, ``(g.F)(x, h) = F(g^-1 x, g^-1 h)``;
- the *input/output* field type of the Euler state is (scalar, vector, scalar) on
  channels (rho, m_x, m_y, E), where the vector carries the standard 2-D representation.

A filter of odd size is centred on its middle tap; a 2x2 filter (stride-2 down-sampling
and transposed up-sampling) is centred between its four taps. In both cases a rotation
about the filter centre is ``rot90`` of the filter array, which is why one spatial
transform serves every layer.

The filter transforms below are all of the form ``psi -> T_h psi`` with
``T_h psi (y) = rho_out(h) psi(h^-1 y) rho_in(h)^-1`` (correlation, ``y`` the offset from
output to input). That is the general solution of the steerability constraint
``K(g y) = rho_out(g) K(y) rho_in(g)^-1`` once the output is made regular by stacking
``T_h psi`` over ``h``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

ORDER = 8
# (k, m) of element index i = k + 4 m.
PARTS: tuple[tuple[int, int], ...] = tuple((i % 4, i // 4) for i in range(ORDER))


def index(k: int, m: int) -> int:
    return (k % 4) + 4 * (m % 2)


def compose(a: int, b: int) -> int:
    """Index of ``ab`` (``b`` acts first); uses ``s r = r^-1 s``."""
    ka, ma = PARTS[a]
    kb, mb = PARTS[b]
    return index(ka + (kb if ma == 0 else -kb), ma + mb)


def inverse(a: int) -> int:
    k, m = PARTS[a]
    return a if m == 1 else index(-k, 0)


# Cayley table and inverses as numpy constants: they are trace-time index arrays, never traced values.
COMPOSE = np.array([[compose(a, b) for b in range(ORDER)] for a in range(ORDER)], dtype=np.int32)
INVERSE = np.array([inverse(a) for a in range(ORDER)], dtype=np.int32)
# REGULAR_GATHER[g, h] = index of g^-1 h: (g.F)[..., h] = F[..., g^-1 h].
REGULAR_GATHER = np.array([[COMPOSE[INVERSE[g], h] for h in range(ORDER)] for g in range(ORDER)], dtype=np.int32)

_R = np.array([[0.0, -1.0], [1.0, 0.0]])  # (m_x, m_y) -> (-m_y, m_x)
_S = np.array([[-1.0, 0.0], [0.0, 1.0]])  # m_x -> -m_x


def standard_rep(g: int) -> np.ndarray:
    """2x2 matrix of the standard (vector) representation: ``r^k s^m -> R^k S^m``."""
    k, m = PARTS[g]
    return np.linalg.matrix_power(_R, k) @ np.linalg.matrix_power(_S, m)


def state_rep(g: int) -> np.ndarray:
    """4x4 matrix acting on the channels (rho, m_x, m_y, E): trivial + standard + trivial."""
    out = np.eye(4)
    out[1:3, 1:3] = standard_rep(g)
    return out


def spatial(a: Float[Array, "h w *rest"], g: int) -> Float[Array, "h w *rest"]:
    """Move an array's leading two (spatial) axes by g, as ``act_d4`` moves a scalar field
    (a numpy array stays one: the filter transforms use it on index arrays)."""
    xp = np if isinstance(a, np.ndarray) else jnp
    k, m = PARTS[g]
    if m:
        a = xp.flip(a, axis=0)
    return xp.rot90(a, k, axes=(0, 1))


@functools.cache
def _taps(k: int) -> np.ndarray:
    """``(8, k*k)``: tap ``t`` of ``spatial(psi, h)`` (taps flattened) is tap ``_taps(k)[h, t]`` of ``psi``."""
    grid = np.arange(k * k).reshape(k, k)
    return np.stack([spatial(grid, h).ravel() for h in range(ORDER)])


def _signed_permutation(matrices: list[np.ndarray], axis: int) -> tuple[np.ndarray, np.ndarray]:
    """For signed permutation matrices, per matrix and index ``j`` along the other axis: the
    index along ``axis`` of the one non-zero entry, and its sign (``(8, 4)`` each)."""
    index = np.stack([np.argmax(np.abs(m), axis=axis) for m in matrices])
    sign = np.stack([np.take_along_axis(m, np.expand_dims(i, axis), axis).squeeze(axis) for m, i in
                     zip(matrices, index)])
    return index.astype(np.int32), sign


# lifting: new input channel d of T_h psi is sign * base channel c of rho_in(h)^-1 = state_rep(h^-1)
LIFT_CHANNEL, LIFT_SIGN = _signed_permutation([state_rep(INVERSE[h]) for h in range(ORDER)], axis=0)
# projection: output p of T_h psi is sign * base output o of rho_out(h) = state_rep(h)
PROJECT_CHANNEL, PROJECT_SIGN = _signed_permutation([state_rep(h) for h in range(ORDER)], axis=1)
_H = np.arange(ORDER)


def _base(psi: Array, coefficients: Array | None, axes: int) -> tuple[Array, tuple]:
    """The filters each element transforms, taps flattened, and the index that selects an
    element's own: ``psi`` itself for a group convolution (``coefficients`` None), else the
    relaxed ``sum_l coefficients[h, l] psi[l]`` of a relaxed group convolution (Wang, Walters
    and Yu 2022). Equal rows of ``coefficients`` make the latter the group convolution of
    ``sum_l coefficients[0, l] psi[l]``, which is exactly equivariant. ``axes``: the number
    of axes after the two spatial ones."""
    if coefficients is None:
        return psi.reshape(-1, *psi.shape[-axes:]), ()
    combined = jnp.einsum("hl,l...->h...", coefficients.astype(psi.dtype), psi)
    return combined.reshape(ORDER, -1, *psi.shape[-axes:]), (_H[:, None, None],)


def lift_filter(
    psi: Float[Array, "*banks kh kw 4 cout"], coefficients: Float[Array, "8 banks"] | None = None
) -> Float[Array, "kh kw 4 cout8"]:
    """Lifting filter from the state type (scalar, vector, scalar) to regular fields.

    Output ``(o, h)`` is ``T_h psi = psi(h^-1 y) rho_in(h)^-1``, stacked channel-major.
    With ``coefficients``, ``psi`` carries a leading filter-bank axis (:func:`_base`).
    One gather: every ``T_h`` is a signed permutation of the base filter's entries.
    """
    k, cout = psi.shape[-4], psi.shape[-1]
    flat, h = _base(psi, coefficients, 2)
    full = flat[h + (_taps(k)[:, :, None], LIFT_CHANNEL[:, None, :])]  # (8[h], k*k, 4, cout)
    full = full * jnp.asarray(LIFT_SIGN, psi.dtype)[:, None, :, None]
    return jnp.moveaxis(full, 0, -1).reshape(k, k, 4, cout * ORDER)


def group_filter(
    psi: Float[Array, "*banks kh kw cin 8 cout"], coefficients: Float[Array, "8 banks"] | None = None
) -> Float[Array, "kh kw cin8 cout8"]:
    """Regular-to-regular filter: output ``(o, h)`` gets ``psi(h^-1 y)[c, h^-1 h', o]``.

    With ``coefficients``, ``psi`` carries a leading filter-bank axis (:func:`_base`).
    """
    k, cin, cout = psi.shape[-5], psi.shape[-3], psi.shape[-1]
    flat, h = _base(psi, coefficients, 3)
    full = flat[h + (_taps(k)[:, :, None], slice(None), REGULAR_GATHER[:, None, :])]  # (8[h], k*k, 8[h'], cin, cout)
    return jnp.transpose(full, (1, 3, 2, 4, 0)).reshape(k, k, cin * ORDER, cout * ORDER)


def project_filter(
    psi: Float[Array, "*banks kh kw cin 4"], coefficients: Float[Array, "8 banks"] | None = None
) -> Float[Array, "kh kw cin8 4"]:
    """Regular-to-state filter: input ``(c, h)`` gets ``rho_out(h) psi(h^-1 y)``.

    With ``coefficients``, ``psi`` carries a leading filter-bank axis (:func:`_base`).
    """
    k, cin = psi.shape[-4], psi.shape[-2]
    flat, h = _base(psi, coefficients, 2)
    full = flat[h + (_taps(k)[:, :, None], slice(None), PROJECT_CHANNEL[:, None, :])]  # (8[h], k*k, 4[p], cin)
    full = full * jnp.asarray(PROJECT_SIGN, psi.dtype)[:, None, :, None]
    return jnp.transpose(full, (1, 3, 0, 2)).reshape(k, k, cin * ORDER, 4)
