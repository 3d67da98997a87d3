"""Exact conservative coarsening: each coarse cell holds the average of ``f x f`` fine cells.

On the conservative state ``(rho, m_x, m_y, E)`` the block average is what a finite-volume
solution on the coarse grid holds: the cell averages of the same fields, so mass, momentum
and energy are conserved (their sums times the cell area agree to round-off). Blocks start
at cell 0 and ``f`` divides the grid, so the map commutes with every element of D4 (a
rotation or reflection of the square maps blocks onto blocks) and with translations by
multiples of ``f``; not with other translations. The average of physical states is physical
(the admissible set is convex in the conservative variables). numpy only, float64 inside,
rounded once to float32. ``docs/data-format.md``, "The Well".
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from symgrad.errors import SymgradError


def check_factor(factor: int, shape: tuple[int, int], where: str = "the data") -> None:
    """Refuse, in one line, a factor that is not a positive integer dividing both sizes."""
    nx, ny = shape
    if int(factor) != factor or factor < 1:
        raise SymgradError(f"coarsening factor {factor!r} must be a whole number >= 1 (1 = as stored)")
    if nx % factor or ny % factor:
        raise SymgradError(
            f"cannot coarsen {where} ({nx}x{ny} cells) by {factor}: the factor must divide both sizes "
            f"(e.g. 4 for 512x512 -> 128x128)")


def coarsen(states: Float[np.ndarray, "*b nx ny 4"], factor: int) -> Float[np.ndarray, "*b mx my 4"]:
    """Average ``states`` ``(..., nx, ny, c)`` over ``factor x factor`` blocks of cells.

    Returns ``(..., nx/factor, ny/factor, c)`` float32 (the sum is taken in float64);
    ``factor == 1`` returns the input unchanged.
    """
    states = np.asarray(states)
    if factor == 1:
        return states
    *batch, nx, ny, c = states.shape
    check_factor(factor, (nx, ny))
    blocks = states.astype(np.float64).reshape(*batch, nx // factor, factor, ny // factor, factor, c)
    return blocks.mean(axis=(-4, -2)).astype(np.float32)


__all__ = ["check_factor", "coarsen"]
