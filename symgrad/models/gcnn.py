"""D4-equivariant group CNN (p4m on regular-representation fields) with the UNet's topology.

Every layer of :class:`symgrad.models.unet.UNetTopology` is replaced by its equivariant
counterpart; widths are counted in *regular fields* (8 real channels each):

- stem: lifting convolution from the state type (rho, E scalars; (m_x, m_y) the standard
  representation, rotating with the grid) to regular fields,
- 3x3 / 1x1 group convolutions, 2x2 stride-2 group convolution for down-sampling and a
  2x2 stride-2 transposed group convolution for up-sampling (2x2 windows of an even grid
  map onto 2x2 windows under every element of D4, so they commute exactly),
- GroupNorm whose statistics run over whole orbits, scale and bias shared over the group
  axis; point-wise GELU (commutes with the permutation of the group axis),
- head: projection from regular fields back to (scalar, vector, scalar); only the two
  scalar outputs carry a bias (a constant vector is not invariant).

The filter transforms (index bookkeeping) are in :mod:`symgrad.models._d4`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array

from symgrad.models import _d4
from symgrad.models._layers import circular_conv, group_norm, norm_groups, upsample_2x2
from symgrad.models.unet import LayerSet, UNetTopology

_PARAM_DTYPE = jnp.float32


def _bias_over_group(b: Array, dtype) -> Array:
    # one bias per field, repeated over its 8 group entries (channel-major layout c*8 + h)
    return jnp.repeat(b.astype(dtype), _d4.ORDER)


class LiftConv(nn.Module):
    features: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != 4:
            raise ValueError("the lifting layer expects the 4 state channels (rho, m_x, m_y, E)")
        psi = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, 4, self.features), _PARAM_DTYPE)
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = circular_conv(x, _d4.lift_filter(psi))
        return y + _bias_over_group(b, y.dtype)


class GroupConv(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cin = x.shape[-1] // _d4.ORDER
        shape = (self.kernel, self.kernel, cin, _d4.ORDER, self.features)
        psi = self.param("kernel", nn.initializers.lecun_normal(in_axis=(-3, -2)), shape, _PARAM_DTYPE)
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = circular_conv(x, _d4.group_filter(psi), self.stride)
        return y + _bias_over_group(b, y.dtype)


class GroupUpsample(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cin = x.shape[-1] // _d4.ORDER
        psi = self.param(
            "kernel", nn.initializers.lecun_normal(in_axis=(-3, -2)), (2, 2, cin, _d4.ORDER, self.features), _PARAM_DTYPE
        )
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = upsample_2x2(x, _d4.group_filter(psi))
        return y + _bias_over_group(b, y.dtype)


class ProjectConv(nn.Module):
    """Regular fields -> (rho, m_x, m_y, E); ``features`` must be 4."""

    features: int = 4
    kernel: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.features != 4:
            raise ValueError("the projection produces the 4 state channels")
        cin = x.shape[-1] // _d4.ORDER
        # the 8 transformed copies are summed, so scale the base filter's fan-in by the group order
        init = nn.initializers.variance_scaling(1.0 / _d4.ORDER, "fan_in", "truncated_normal")
        psi = self.param("projection_kernel", init, (self.kernel, self.kernel, cin, 4), _PARAM_DTYPE)
        b = self.param("bias", nn.initializers.zeros, (2,), _PARAM_DTYPE)
        y = circular_conv(x, _d4.project_filter(psi))
        zero = jnp.zeros((), y.dtype)
        b = b.astype(y.dtype)
        return y + jnp.stack([b[0], zero, zero, b[1]])


class OrbitGroupNorm(nn.Module):
    num_groups: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fields = x.shape[-1] // _d4.ORDER
        scale = self.param("scale", nn.initializers.ones, (fields,), _PARAM_DTYPE)
        bias = self.param("bias", nn.initializers.zeros, (fields,), _PARAM_DTYPE)
        return group_norm(x, scale, bias, norm_groups(fields, self.num_groups), orbit=_d4.ORDER)


D4_LAYERS = LayerSet(
    stem=lambda features, name: LiftConv(features, 3, name=name),
    head=lambda features, name: ProjectConv(features, 3, name=name),
    conv=GroupConv,
    up=GroupUpsample,
    norm=OrbitGroupNorm,
    orbit=_d4.ORDER,
)


def gcnn(
    hidden: int = 8,
    multipliers: tuple[int, ...] = (1, 2, 4, 16),
    blocks: int = 1,
    middle_blocks: int = 2,
    num_groups: int = 8,
) -> UNetTopology:
    """The D4-equivariant U-Net; ``hidden`` counts regular fields (8 channels each)."""
    return UNetTopology(hidden, tuple(multipliers), blocks, middle_blocks, num_groups, D4_LAYERS)
