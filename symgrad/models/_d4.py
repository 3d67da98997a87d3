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

from typing import Callable

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
    """Move an array's leading two (spatial) axes by g, as ``act_d4`` moves a scalar field."""
    k, m = PARTS[g]
    if m:
        a = jnp.flip(a, axis=0)
    return jnp.rot90(a, k, axes=(0, 1))


def element_filters(
    psi: Float[Array, "banks *filter"], coefficients: Float[Array, "8 banks"] | None
) -> Callable[[int], Float[Array, "*filter"]]:
    """The base filter each element ``h`` transforms: ``psi`` itself for a group convolution
    (``coefficients`` None), else the relaxed ``sum_l coefficients[h, l] psi[l]`` of a relaxed
    group convolution (Wang, Walters and Yu 2022): equal rows of ``coefficients`` make it the
    group convolution of ``sum_l coefficients[0, l] psi[l]``, which is exactly equivariant."""
    if coefficients is None:
        return lambda h: psi
    combined = jnp.einsum("hl,l...->h...", coefficients.astype(psi.dtype), psi)
    return lambda h: combined[h]


def lift_filter(
    psi: Float[Array, "*banks kh kw 4 cout"], coefficients: Float[Array, "8 banks"] | None = None
) -> Float[Array, "kh kw 4 cout8"]:
    """Lifting filter from the state type (scalar, vector, scalar) to regular fields.

    Output ``(o, h)`` is ``T_h psi = psi(h^-1 y) rho_in(h)^-1``, stacked channel-major.
    With ``coefficients``, ``psi`` carries a leading filter-bank axis (:func:`element_filters`).
    """
    base = element_filters(psi, coefficients)
    stacked = []
    for h in range(ORDER):
        moved = spatial(base(h), h)
        # rows of rho_in(h)^-1 index the base filter's input channel, columns the new one
        rho_inv = jnp.asarray(state_rep(INVERSE[h]), dtype=psi.dtype)
        stacked.append(jnp.einsum("xyco,cd->xydo", moved, rho_inv))
    full = jnp.stack(stacked, axis=-1)  # (kh, kw, 4, cout, 8)
    return full.reshape(*full.shape[:3], -1)


def group_filter(
    psi: Float[Array, "*banks kh kw cin 8 cout"], coefficients: Float[Array, "8 banks"] | None = None
) -> Float[Array, "kh kw cin8 cout8"]:
    """Regular-to-regular filter: output ``(o, h)`` gets ``psi(h^-1 y)[c, h^-1 h', o]``.

    With ``coefficients``, ``psi`` carries a leading filter-bank axis (:func:`element_filters`).
    """
    kh, kw, cin, _, cout = psi.shape[-5:]
    base = element_filters(psi, coefficients)
    stacked = [spatial(base(h), h)[:, :, :, REGULAR_GATHER[h], :] for h in range(ORDER)]
    full = jnp.stack(stacked, axis=-1)  # (kh, kw, cin, 8[h'], cout, 8[h])
    return full.reshape(kh, kw, cin * ORDER, cout * ORDER)


def project_filter(
    psi: Float[Array, "*banks kh kw cin 4"], coefficients: Float[Array, "8 banks"] | None = None
) -> Float[Array, "kh kw cin8 4"]:
    """Regular-to-state filter: input ``(c, h)`` gets ``rho_out(h) psi(h^-1 y)``.

    With ``coefficients``, ``psi`` carries a leading filter-bank axis (:func:`element_filters`).
    """
    kh, kw, cin, nout = psi.shape[-4:]
    base = element_filters(psi, coefficients)
    stacked = []
    for h in range(ORDER):
        moved = spatial(base(h), h)
        rho = jnp.asarray(state_rep(h), dtype=psi.dtype)
        stacked.append(jnp.einsum("xyco,po->xycp", moved, rho))
    full = jnp.stack(stacked, axis=3)  # (kh, kw, cin, 8[h], 4)
    return full.reshape(kh, kw, cin * ORDER, nout)
