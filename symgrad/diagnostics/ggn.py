"""The Gauss-Newton operator of the SMSE loss, matrix-free (docs/design.md section 5).

``G v = (1/|B|) sum_{b in B} J_b^T H J_b v`` with ``J_b`` the Jacobian of the model output
on sample ``b`` wrt the flat parameters and ``H = diag(2 / (C nx ny sigma_c^2))`` the
output Hessian of SMSE (``symgrad.loss.smse_output_hessian_diag``). G is never formed:
the model is linearised once around ``params`` on the curvature batch (``jax.linearize``
stores the forward residuals), and each product is one linearised forward (``J v``) and
its transpose (``J^T w``, ``jax.linear_transpose``). Products for a block of vectors are
``jax.vmap`` of the same linear map, so one linearisation serves every right-hand side.

All vectors are flat, in ``jax.flatten_util.ravel_pytree(params)`` order.

``GaussNewtonBlocks`` is what the chi solvers use: it linearises once, keeps the
linearisation on the device (a ``jax.tree_util.Partial`` passed to one jitted product, so
nothing is baked into a compilation as a constant) and counts every product it evaluates.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from symgrad.diagnostics._rows import pad_to_bucket
from symgrad.loss import smse_output_hessian_diag

# output_hessian(pred, t) -> H t for a tangent t of the batched prediction.
OutputHessian = Callable[[Array, Array], Array]


def smse_output_hessian(sigma) -> OutputHessian:
    """``t -> H t`` for SMSE: a per-channel diagonal, ``2 / (C nx ny sigma_c^2)``."""

    def hv(pred, t):
        nx, ny = pred.shape[-3], pred.shape[-2]
        return t * smse_output_hessian_diag(sigma, nx, ny).astype(t.dtype)

    return hv


class LinearizedGGN(NamedTuple):
    """The linearised model on a curvature batch and its Gauss-Newton product."""

    flat_params: Float[Array, " p"]
    matvec: Callable[[Array], Array]  # flat v -> G v, linear; vmap it for blocks
    batch_size: int

    @property
    def n_params(self) -> int:
        return int(self.flat_params.shape[0])


def linearize_ggn(
    apply_fn: Callable[[PyTree, Array], Array],
    params: PyTree,
    x_curvature: Float[Array, "b nx ny c"],
    sigma=None,
    *,
    output_hessian: OutputHessian | None = None,
) -> LinearizedGGN:
    """Linearise ``apply_fn`` at ``params`` on ``x_curvature`` once; return ``v -> G v``.

    Call it inside ``jax.jit`` (as the solvers do): outside a trace the stored residuals
    would be baked into every later compilation as constants.
    """
    if output_hessian is None:
        if sigma is None:
            raise ValueError("the Gauss-Newton operator needs sigma (SMSE) or an output_hessian")
        output_hessian = smse_output_hessian(sigma)
    flat, unravel = ravel_pytree(params)
    batch = x_curvature.shape[0]
    pred, f_jvp = jax.linearize(lambda p: apply_fn(unravel(p), x_curvature), flat)
    f_vjp = jax.linear_transpose(f_jvp, flat)

    def matvec(v):
        jv = f_jvp(v.astype(flat.dtype))
        (g,) = f_vjp(output_hessian(pred, jv))
        return g / batch

    return LinearizedGGN(flat, matvec, batch)


def ggn_operator(
    apply_fn, params, x_curvature, sigma=None, *, output_hessian=None
) -> lx.FunctionLinearOperator:
    """G as a lineax operator on flat vectors, tagged symmetric positive semi-definite."""
    lin = linearize_ggn(apply_fn, params, x_curvature, sigma, output_hessian=output_hessian)
    return _as_operator(lin.matvec, lin.flat_params)


def damped_ggn_operator(
    apply_fn, params, x_curvature, sigma=None, *, damping: float, output_hessian=None
) -> lx.FunctionLinearOperator:
    """``A = lambda I + G`` as a lineax operator (symmetric positive definite for lambda > 0)."""
    lin = linearize_ggn(apply_fn, params, x_curvature, sigma, output_hessian=output_hessian)
    return damped_operator(lin, damping)


def damped_operator(lin: LinearizedGGN, damping) -> lx.FunctionLinearOperator:
    mv = lambda v: damping * v + lin.matvec(v)  # noqa: E731
    return _as_operator(mv, lin.flat_params)


def _as_operator(mv, flat) -> lx.FunctionLinearOperator:
    structure = jax.ShapeDtypeStruct(flat.shape, flat.dtype)
    return lx.FunctionLinearOperator(
        mv, structure, tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


# ----------------------------------------------------------------------------- blocks


@partial(jax.jit, static_argnums=(0,))
def _linearize_flat(apply_fn, params, x_curvature):
    flat, unravel = ravel_pytree(params)
    pred, f_jvp = jax.linearize(lambda p: apply_fn(unravel(p), x_curvature), flat)
    return flat, pred, f_jvp


def apply_blocks(output_hessian, vectors_per_product, state, block):
    """``(lambda I + G) V`` for the rows of ``block``, traceable (the solvers' jitted loops call it).

    ``state = (flat_params, pred, f_jvp, sigma, damping)`` as held by ``GaussNewtonBlocks``.
    ``vectors_per_product`` rows are vmapped at a time (``lax.map``; None: all): the tangent
    activations of a vmapped jvp grow with the rows, which bounds memory for big models.
    """
    flat, pred, f_jvp, sigma, damping = state
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


class GaussNewtonBlocks:
    """``V -> (lambda I + G) V`` for blocks ``V`` of flat vectors ``(k, P)``, counted.

    The model is linearised once at construction on the curvature batch; every call is
    one jitted, vmapped linearised jvp/transpose pair. ``products`` counts the vectors
    multiplied so far (a block of k is k products), the unit every cost here is stated in.
    ``damping=0`` gives G itself (the spectrum probe). ``vectors_per_product`` bounds how
    many vectors one vmapped product carries (memory of the tangent activations).

    The solvers see only this interface: ``__call__``, ``damping``, ``dtype``, ``n_params``,
    ``products`` and, for a solver that runs its loop inside one jit,
    ``traced_product(state, block)`` with ``state``.
    """

    def __init__(self, apply_fn, params, x_curvature, sigma=None, *, damping: float = 0.0,
                 output_hessian: OutputHessian | None = None, vectors_per_product: int | None = None):
        if output_hessian is None and sigma is None:
            raise ValueError("the Gauss-Newton operator needs sigma (SMSE) or an output_hessian")
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        self._sigma = None if sigma is None else jnp.asarray(sigma, dtype)
        self._hessian = output_hessian
        self._chunk = None if vectors_per_product is None else int(vectors_per_product)
        # static and hashable (one object per operator), for solvers whose loop is one jit
        self.traced_product = partial(apply_blocks, output_hessian, self._chunk)
        self._flat, self._pred, self._f_jvp = _linearize_flat(apply_fn, params, jnp.asarray(x_curvature, dtype))
        self.damping = float(damping)
        self._damping = jnp.asarray(damping, dtype)
        self.products = 0
        self.curvature_batch_size = int(x_curvature.shape[0])

    @property
    def n_params(self) -> int:
        return int(self._flat.shape[0])

    @property
    def dtype(self):
        return self._flat.dtype

    @property
    def state(self):
        """The device-held part of a product: ``traced_product(state, block)`` inside a jitted loop."""
        return (self._flat, self._pred, self._f_jvp, self._sigma, self._damping)

    def __call__(self, block):
        block = jnp.asarray(block)
        k = int(block.shape[0])
        self.products += k  # the vectors asked for; zero rows of padding cost time, not products
        # few compiled shapes as blocks shrink (_rows.py)
        return _apply_blocks_jit(self._hessian, self._chunk, self.state, pad_to_bucket(block))[:k]

    def with_damping(self, damping: float) -> "GaussNewtonBlocks":
        """The same linearisation with another damping (no new forward pass)."""
        other = object.__new__(GaussNewtonBlocks)
        other.__dict__.update(self.__dict__)
        other.damping = float(damping)
        other._damping = jnp.asarray(damping, self.dtype)
        other.products = 0
        return other
