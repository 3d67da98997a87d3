"""The Gauss-Newton operator of the SMSE loss, matrix-free (docs/design.md section 5).

``G v = (1/|B|) sum_{b in B} J_b^T H J_b v`` with ``J_b`` the Jacobian of the model output
on sample ``b`` wrt the flat parameters and ``H = diag(2 / (C nx ny sigma_c^2))`` the
output Hessian of SMSE (``symgrad.loss.smse_output_hessian_diag``). G is never formed:
the model is linearised once around ``params`` on the curvature batch (``jax.linearize``
stores the forward residuals), and each product is one linearised forward (``J v``) and
its transpose (``J^T w``, ``jax.linear_transpose``). Products for a block of vectors are
``jax.vmap`` of the same linear map, so one linearisation serves every right-hand side.

All vectors are flat, in ``jax.flatten_util.ravel_pytree(params)`` order.

``GaussNewtonBlocks`` is the ``solvers.ChiOperator`` the chi solvers use: it linearises
once, keeps the linearisation on the device (passed as an argument to one jitted product,
so nothing is baked into a compilation as a constant), owns the damping and counts every
product it evaluates, in ``__call__`` and inside a solver's jitted ``loop``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from symgrad.diagnostics._rows import pad_to_bucket
from symgrad.diagnostics.certify import linearity_rounding
from symgrad.loss import smse_output_hessian_diag

# output_hessian(pred, t) -> H t for a tangent t of the batched prediction.
OutputHessian = Callable[[Array, Array], Array]


def smse_output_hessian(sigma) -> OutputHessian:
    """``t -> H t`` for SMSE: a per-channel diagonal, ``2 / (C nx ny sigma_c^2)``."""

    def hv(pred, t):
        nx, ny = pred.shape[-3], pred.shape[-2]
        return t * smse_output_hessian_diag(sigma, nx, ny).astype(t.dtype)

    return hv


# ----------------------------------------------------------------------------- blocks


@partial(jax.jit, static_argnums=(0,))
def _linearize_flat(apply_fn, params, x_curvature):
    flat, unravel = ravel_pytree(params)
    pred, f_jvp = jax.linearize(lambda p: apply_fn(unravel(p), x_curvature), flat)
    return flat, pred, f_jvp


class _Linearization(NamedTuple):
    """The model linearised on the curvature batch: what every product reuses."""

    flat: Array
    pred: Array
    f_jvp: Callable
    sigma: Array | None


def apply_blocks(output_hessian, vectors_per_product, state, block):
    """``(lambda I + G) V`` for the rows of ``block``, traceable (the solvers' jitted loops call it).

    ``state = (linearization, damping)`` as held by ``GaussNewtonBlocks``.
    ``vectors_per_product`` rows are vmapped at a time (``lax.map``; None: all): the tangent
    activations of a vmapped jvp grow with the rows, which bounds memory for big models.
    """
    (flat, pred, f_jvp, sigma), damping = state
    hv = smse_output_hessian(sigma) if output_hessian is None else output_hessian
    f_vjp = jax.linear_transpose(f_jvp, flat)
    batch = pred.shape[0]

    def one(v):
        (g,) = f_vjp(hv(pred, f_jvp(v)))
        return damping * v + g / batch

    block = block.astype(flat.dtype)
    if vectors_per_product is None or vectors_per_product >= block.shape[0]:
        return jax.vmap(one)(block)
    return jax.lax.map(one, block, batch_size=vectors_per_product)


_apply_blocks_jit = jax.jit(apply_blocks, static_argnums=(0, 1))


@partial(jax.jit, static_argnums=(0, 1, 2))
def _run_loop(body, output_hessian, vectors_per_product, state, *args):
    return body(partial(apply_blocks, output_hessian, vectors_per_product, state), *args)


class GaussNewtonBlocks:
    """``V -> (lambda I + G) V`` for blocks ``V`` of flat vectors ``(k, P)``, counted.

    The model is linearised once at construction on the curvature batch; every call is
    one jitted, vmapped linearised jvp/transpose pair. ``products`` counts the vectors
    multiplied so far (a block of k is k products), the unit every cost here is stated in.
    ``damping=0`` gives G itself (the spectrum probe). ``vectors_per_product`` bounds how
    many vectors one vmapped product carries (memory of the tangent activations).
    Implements ``solvers.ChiOperator``: ``__call__``, ``loop``, ``damping``, ``dtype``,
    ``n_params``, ``products``.
    """

    def __init__(self, apply_fn, params, x_curvature, sigma=None, *, damping: float = 0.0,
                 output_hessian: OutputHessian | None = None, vectors_per_product: int | None = None):
        if output_hessian is None and sigma is None:
            raise ValueError("the Gauss-Newton operator needs sigma (SMSE) or an output_hessian")
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        flat, pred, f_jvp = _linearize_flat(apply_fn, params, jnp.asarray(x_curvature, dtype))
        lin = _Linearization(flat, pred, f_jvp, None if sigma is None else jnp.asarray(sigma, dtype))
        self._setup(lin, output_hessian, vectors_per_product, damping)

    def _setup(self, lin, output_hessian, vectors_per_product, damping, shared=None):
        self._lin = lin
        self._shared = {} if shared is None else shared  # what copies with another damping share
        self._hessian = output_hessian
        self._chunk = None if vectors_per_product is None else int(vectors_per_product)
        self.damping = float(damping)
        self.products = 0
        self.curvature_batch_size = int(lin.pred.shape[0])

    @property
    def n_params(self) -> int:
        return int(self._lin.flat.shape[0])

    @property
    def dtype(self):
        return self._lin.flat.dtype

    def _state(self):
        return (self._lin, jnp.asarray(self.damping, self.dtype))

    def __call__(self, block):
        block = jnp.asarray(block)
        k = int(block.shape[0])
        self.products += k  # the vectors asked for; zero rows of padding cost time, not products
        # few compiled shapes as blocks shrink (_rows.py)
        return _apply_blocks_jit(self._hessian, self._chunk, self._state(), pad_to_bucket(block))[:k]

    def loop(self, body, *args):
        """``body(product, *args) -> (outputs, products used)`` in one jitted program (a solver's
        whole loop, as the baseline CG runs); the products used are counted here."""
        outputs, used = _run_loop(body, self._hessian, self._chunk, self._state(), *args)
        self.products += int(used)
        return outputs

    def with_damping(self, damping: float) -> "GaussNewtonBlocks":
        """The same linearisation with another damping (no new forward pass), its own count."""
        other = GaussNewtonBlocks.__new__(GaussNewtonBlocks)
        other._setup(self._lin, self._hessian, self._chunk, damping, self._shared)
        return other

    def rounding(self) -> float:
        """An a-posteriori estimate of ``||fl(A z) - A z||`` for unit z (``certify.linearity_rounding``
        on G, plus ``eps lambda``), computed once per linearisation; its products are counted."""
        if "rounding" not in self._shared:
            undamped = (self._lin, jnp.asarray(0.0, self.dtype))

            def apply(block):
                return _apply_blocks_jit(self._hessian, self._chunk, undamped, pad_to_bucket(block))[:block.shape[0]]

            estimate, used = linearity_rounding(apply, self.n_params, self.dtype)
            self.products += used
            self._shared["rounding"] = estimate
        return self._shared["rounding"] + float(jnp.finfo(self.dtype).eps) * self.damping
