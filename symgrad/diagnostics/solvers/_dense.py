"""``--solver dense``: the exact reference for small models.

Forms ``A = lambda I + G`` column by column with the same matrix-free products the other
solvers use (P products), factorises it with ``lineax.Cholesky`` and solves every
right-hand side. The certificate is the same as everyone's: explicit residuals through the matrix-free operator
and ``e = ||r||^2 / lambda``, so the dense answer is checked against the operator the
iterative solvers see. Refuses models above ``Dense.max_params``: it is never chosen for
the user, only asked for.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from symgrad.diagnostics.certify import Targets
from symgrad.diagnostics.solvers._base import ChiSolution, finish
from symgrad.errors import SettingError

# Columns of A formed per batched product.
_COLUMN_BLOCK = 256


def dense_matrix(operator) -> np.ndarray:
    """``lambda I + G`` as a dense symmetric float64 matrix (P products)."""
    n = operator.n_params
    cols = []
    for start in range(0, n, _COLUMN_BLOCK):
        stop = min(n, start + _COLUMN_BLOCK)
        eye = jnp.zeros((stop - start, n), operator.dtype).at[jnp.arange(stop - start), jnp.arange(start, stop)].set(1)
        cols.append(np.asarray(operator(eye), np.float64))
    a = np.concatenate(cols, axis=0)
    return 0.5 * (a + a.T)


@dataclasses.dataclass(frozen=True)
class Dense:
    """``--solver dense``: Cholesky of the formed ``lambda I + G`` (models up to ``max_params``)."""

    max_params: int = 8_000
    name = "dense"

    def check(self, n: int) -> None:
        """Refuse a model of ``n`` parameters above ``max_params`` (the memory plan asks first)."""
        if n > self.max_params:
            raise SettingError(
                f"the dense chi solver forms the {n} x {n} Gauss-Newton matrix, more than its limit of "
                f"{self.max_params} parameters; choose {{solver}} block (matrix-free, the default)"
            )

    def solve(self, operator, rhs, targets: Targets, *, progress=None) -> ChiSolution:
        n = operator.n_params
        self.check(n)
        operator.rounding()  # estimated once, before this solve's count starts
        products_before = operator.products
        a = dense_matrix(operator)
        if progress is not None:
            progress(1, operator.products - products_before, np.nan)
        op = lx.MatrixLinearOperator(jnp.asarray(a), lx.positive_semidefinite_tag)
        solver = lx.Cholesky()
        state = solver.init(op, {})
        b = jnp.asarray(rhs, operator.dtype)
        x = jax.vmap(lambda bk: lx.linear_solve(op, jnp.asarray(bk, a.dtype), solver, state=state).value)(b)
        return finish(operator, b, x.astype(operator.dtype), targets, iterations=1, products_before=products_before,
                      out_of_steps=False)
