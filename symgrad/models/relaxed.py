"""Relaxed D4 group CNN (Wang, Walters and Yu, ICML 2022) with the UNet's topology.

Every filter layer of the G-CNN (:mod:`symgrad.models.gcnn`) is replaced by its *relaxed*
counterpart: a layer holds ``L`` filter banks ``psi_l`` and coefficients ``w[h, l]``, one per
group element ``h`` and bank, and the output of element ``h`` uses the G-CNN's transform
``T_h`` of the element's own base filter ``sum_l w[h, l] psi_l``. Equal coefficients over
``h`` make the layer the exact group convolution of ``sum_l w[0, l] psi_l``; unequal ones
let the network break D4 where the data reward it. The coefficients start equal (all
ones), so a freshly initialised network is exactly D4-equivariant.

Biases, GroupNorm and GELU are the G-CNN's (equivariant): only the filters relax. The
relaxation penalty of training is :func:`coefficient_spread` times the config's
``relaxation_weight`` (docs/models.md, docs/training.md).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from symgrad.models import _d4
from symgrad.models._layers import circular_conv, upsample_2x2
from symgrad.models.gcnn import OrbitGroupNorm, _bias_over_group
from symgrad.models.unet import LayerSet, UNetTopology

_PARAM_DTYPE = jnp.float32
COEFFICIENTS = "coefficients"  # the parameter name of every layer's (8, L) coefficients


def _coefficients(module: nn.Module, banks: int) -> Array:
    return module.param(COEFFICIENTS, nn.initializers.ones, (_d4.ORDER, banks), _PARAM_DTYPE)


class RelaxedLiftConv(nn.Module):
    features: int
    kernel: int = 3
    banks: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != 4:
            raise ValueError("the lifting layer expects the 4 state channels (rho, m_x, m_y, E)")
        # the bank axis counts in the fan-in: the sum of L banks has the G-CNN filter's variance
        shape = (self.banks, self.kernel, self.kernel, 4, self.features)
        psi = self.param("kernel", nn.initializers.lecun_normal(), shape, _PARAM_DTYPE)
        w = _coefficients(self, self.banks)
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = circular_conv(x, _d4.lift_filter(psi, w))
        return y + _bias_over_group(b, y.dtype)


class RelaxedGroupConv(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    banks: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cin = x.shape[-1] // _d4.ORDER
        shape = (self.banks, self.kernel, self.kernel, cin, _d4.ORDER, self.features)
        psi = self.param("kernel", nn.initializers.lecun_normal(in_axis=(-3, -2)), shape, _PARAM_DTYPE)
        w = _coefficients(self, self.banks)
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = circular_conv(x, _d4.group_filter(psi, w), self.stride)
        return y + _bias_over_group(b, y.dtype)


class RelaxedGroupUpsample(nn.Module):
    features: int
    banks: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cin = x.shape[-1] // _d4.ORDER
        shape = (self.banks, 2, 2, cin, _d4.ORDER, self.features)
        psi = self.param("kernel", nn.initializers.lecun_normal(in_axis=(-3, -2)), shape, _PARAM_DTYPE)
        w = _coefficients(self, self.banks)
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = upsample_2x2(x, _d4.group_filter(psi, w))
        return y + _bias_over_group(b, y.dtype)


class RelaxedProjectConv(nn.Module):
    """Regular fields -> (rho, m_x, m_y, E); ``features`` must be 4."""

    features: int = 4
    kernel: int = 3
    banks: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.features != 4:
            raise ValueError("the projection produces the 4 state channels")
        cin = x.shape[-1] // _d4.ORDER
        # the 8 transformed copies are summed, so scale the base filter's fan-in by the group order
        init = nn.initializers.variance_scaling(1.0 / _d4.ORDER, "fan_in", "truncated_normal")
        psi = self.param("projection_kernel", init, (self.banks, self.kernel, self.kernel, cin, 4), _PARAM_DTYPE)
        w = _coefficients(self, self.banks)
        b = self.param("bias", nn.initializers.zeros, (2,), _PARAM_DTYPE)
        y = circular_conv(x, _d4.project_filter(psi, w))
        zero = jnp.zeros((), y.dtype)
        b = b.astype(y.dtype)
        return y + jnp.stack([b[0], zero, zero, b[1]])


def relaxed_layers(banks: int) -> LayerSet:
    """The G-CNN's layer set with every filter layer relaxed over ``banks`` filter banks."""
    return LayerSet(
        stem=lambda features, name: RelaxedLiftConv(features, 3, banks, name=name),
        head=lambda features, name: RelaxedProjectConv(features, 3, banks, name=name),
        conv=functools.partial(RelaxedGroupConv, banks=banks),
        up=functools.partial(RelaxedGroupUpsample, banks=banks),
        norm=OrbitGroupNorm,
        orbit=_d4.ORDER,
    )


def relaxed(
    hidden: int = 6,
    multipliers: tuple[int, ...] = (1, 2, 4, 16),
    blocks: int = 1,
    middle_blocks: int = 2,
    num_groups: int = 8,
    filter_banks: int = 2,
) -> UNetTopology:
    """The relaxed D4 U-Net; ``hidden`` counts regular fields (8 channels each)."""
    return UNetTopology(hidden, tuple(multipliers), blocks, middle_blocks, num_groups, relaxed_layers(filter_banks))


def coefficient_spread(params: PyTree) -> Float[Array, ""]:
    """The coefficients' spread over the group: ``sum over layers and banks l of
    sum_h (w[h, l] - mean_h' w[h', l])^2``. Zero exactly when every layer is a group
    convolution (the network is then exactly D4-equivariant); zero for a tree without
    coefficients (the other models)."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if getattr(path[-1], "key", None) == COEFFICIENTS]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return sum(jnp.sum(jnp.square(w - jnp.mean(w, axis=0, keepdims=True))) for w in leaves)
