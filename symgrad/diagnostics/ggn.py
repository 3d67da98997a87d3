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
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from symgrad.diagnostics._rows import pad_to_bucket, settle
from symgrad.diagnostics.certify import linearity_rounding
from symgrad.diagnostics.solvers._base import host_width
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


class Layout(NamedTuple):
    """How blocks lie on the devices: ``pad`` zero coordinates appended to every vector (so
    that the parameters split evenly), and the sharding of a ``(k, P + pad)`` block (None:
    one device). The padded coordinates are decoupled: the operator is ``lambda I`` there,
    so zero right-hand sides there have zero solutions and add nothing to any form."""

    pad: int = 0
    sharding: object = None


def apply_blocks(output_hessian, vectors_per_product, layout, state, block):
    """``(lambda I + G) V`` for the rows of ``block``, traceable (the solvers' jitted loops call it).

    ``state = (linearization, damping)`` as held by ``GaussNewtonBlocks``; ``layout`` a
    ``Layout``. ``vectors_per_product`` rows are vmapped at a time (``lax.map``; None: all):
    the tangent activations of a vmapped jvp grow with the rows, which bounds memory for big
    models. On several devices the curvature batch is sharded, so each product is a sum
    over the devices' shards (XLA's all-reduce).
    """
    (flat, pred, f_jvp, sigma), damping = state
    hv = smse_output_hessian(sigma) if output_hessian is None else output_hessian
    f_vjp = jax.linear_transpose(f_jvp, flat)
    batch = pred.shape[0]
    n = flat.shape[0]

    def one(v):
        (g,) = f_vjp(hv(pred, f_jvp(v[:n] if layout.pad else v)))
        g = g / batch
        return damping * v + (jnp.pad(g, (0, layout.pad)) if layout.pad else g)

    block = block.astype(flat.dtype)
    if vectors_per_product is None or vectors_per_product >= block.shape[0]:
        out = jax.vmap(one)(block)
    else:
        out = jax.lax.map(one, block, batch_size=vectors_per_product)
    return out if layout.sharding is None else jax.lax.with_sharding_constraint(out, layout.sharding)


_apply_blocks_jit = jax.jit(apply_blocks, static_argnums=(0, 1, 2))


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _run_loop(body, output_hessian, vectors_per_product, layout, state, *args):
    return body(partial(apply_blocks, output_hessian, vectors_per_product, layout, state), *args)


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
                 output_hessian: OutputHessian | None = None, vectors_per_product: int | None = None,
                 mesh=None):
        if output_hessian is None and sigma is None:
            raise ValueError("the Gauss-Newton operator needs sigma (SMSE) or an output_hessian")
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        x_curvature = jnp.asarray(x_curvature, dtype)
        layout = Layout()
        if mesh is not None and mesh.size > 1:
            from jax.sharding import NamedSharding, PartitionSpec

            axis = mesh.axis_names[0]
            if x_curvature.shape[0] % mesh.size:
                raise ValueError(f"the curvature batch {x_curvature.shape[0]} does not split over {mesh.size} devices")
            x_curvature = jax.device_put(x_curvature, NamedSharding(mesh, PartitionSpec(axis)))
            params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
            n = sum(int(a.size) for a in leaves)
            layout = Layout((-n) % mesh.size, NamedSharding(mesh, PartitionSpec(None, axis)))
        flat, pred, f_jvp = _linearize_flat(apply_fn, params, x_curvature)
        lin = _Linearization(flat, pred, f_jvp, None if sigma is None else jnp.asarray(sigma, dtype))
        self._setup(lin, output_hessian, vectors_per_product, damping, layout=layout)

    def _setup(self, lin, output_hessian, vectors_per_product, damping, shared=None, layout=None):
        self._lin = lin
        self.layout = layout or Layout()
        self._shared = {} if shared is None else shared  # what copies with another damping share
        self._hessian = output_hessian
        self._chunk = None if vectors_per_product is None else int(vectors_per_product)
        self.damping = float(damping)
        self.products = 0
        self.curvature_batch_size = int(lin.pred.shape[0])

    @property
    def n_params(self) -> int:
        """The length of the vectors it multiplies: the parameters, and the padding of ``layout``."""
        return int(self._lin.flat.shape[0]) + self.layout.pad

    def device_block(self, rows):
        """Host rows ``(k, P)`` as a block this operator multiplies: padded and sharded as ``layout`` says."""
        rows = np.asarray(rows, self.dtype)
        if self.layout.sharding is None:
            return jnp.asarray(rows)
        if self.layout.pad:
            rows = np.pad(rows, ((0, 0), (0, self.layout.pad)))
        return jax.make_array_from_callback(rows.shape, self.layout.sharding, lambda index: rows[index])

    def host_rows(self, block) -> np.ndarray:
        """A block back on the host, without the padding (every process gets all of it)."""
        if not getattr(block, "is_fully_addressable", True):
            from jax.experimental import multihost_utils

            block = multihost_utils.process_allgather(block, tiled=True)
        out = np.asarray(block)
        return out[:, :out.shape[1] - self.layout.pad] if self.layout.pad else out

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
        return settle(_apply_blocks_jit(self._hessian, self._chunk, self.layout, self._state(), pad_to_bucket(block))[:k])

    def loop(self, body, *args):
        """``body(product, *args) -> (outputs, products used)`` in one jitted program (a solver's
        whole loop, as the baseline CG runs); the products used are counted here."""
        outputs, used = _run_loop(body, self._hessian, self._chunk, self.layout, self._state(), *args)
        self.products += int(used)
        return outputs

    def with_damping(self, damping: float) -> "GaussNewtonBlocks":
        """The same linearisation with another damping (no new forward pass), its own count."""
        other = GaussNewtonBlocks.__new__(GaussNewtonBlocks)
        other._setup(self._lin, self._hessian, self._chunk, damping, self._shared, self.layout)
        return other

    def rounding(self) -> float:
        """An a-posteriori estimate of ``||fl(A z) - A z||`` for unit z (``certify.linearity_rounding``
        on G, plus ``eps lambda``), computed once per linearisation; its products are counted."""
        if "rounding" not in self._shared:
            undamped = (self._lin, jnp.asarray(0.0, self.dtype))

            def apply(block):  # (k, P) rows in, (k, P) rows out, on the host
                block = self.device_block(block)
                out = _apply_blocks_jit(self._hessian, self._chunk, self.layout, undamped, pad_to_bucket(block))
                return self.host_rows(out[:block.shape[0]])

            estimate, used = linearity_rounding(apply, host_width(self), self.dtype)
            self.products += used
            self._shared["rounding"] = estimate
        return self._shared["rounding"] + float(jnp.finfo(self.dtype).eps) * self.damping
