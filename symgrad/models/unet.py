"""Residual U-Net in the style of PDEArena's "modern" UNet, on the periodic grid.

The topology (:class:`UNetTopology`) is written once and instantiated with a *layer set*:
plain convolutions here, D4 group convolutions in :mod:`symgrad.models.gcnn`. That makes
"the G-CNN has the same topology as the UNet" true by construction.

Topology, for multipliers ``(m_0, ..., m_{L-1})`` and base width ``C``:

    stem conv3x3 4 -> C
    for level l:  `blocks` residual blocks -> C m_l, keep skip_l, 2x2 stride-2 conv (C m_l -> C m_l)
    `middle_blocks` residual blocks at C m_{L-1}
    for level l = L-1 .. 0: 2x2 stride-2 transposed conv -> C m_l, concat skip_l (2 C m_l),
                            `blocks` residual blocks -> C m_l
    GroupNorm, GELU, conv3x3 C -> 4

Residual block (pre-activation, PDEArena): ``x + conv(gelu(norm(conv(gelu(norm(x))))))``
with a 1x1 conv on the shortcut when the width changes. All padding is circular; the
total down-sampling factor is ``2**L``, which is the translation stride the network is
exactly equivariant to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array

from symgrad.models._layers import circular_conv, gelu, group_norm, norm_groups, upsample_2x2

_PARAM_DTYPE = jnp.float32  # parameters are created in float32; Model.init(dtype=...) casts


class Conv(nn.Module):
    """Circular convolution; ``kernel == stride == 2`` is the tiling down-sampler."""

    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.param(
            "kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, x.shape[-1], self.features), _PARAM_DTYPE
        )
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = circular_conv(x, k, self.stride)
        return y + b.astype(y.dtype)


class Upsample(nn.Module):
    """2x2 stride-2 transposed convolution."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features), _PARAM_DTYPE)
        b = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
        y = upsample_2x2(x, k)
        return y + b.astype(y.dtype)


class GroupNorm(nn.Module):
    num_groups: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), _PARAM_DTYPE)
        bias = self.param("bias", nn.initializers.zeros, (c,), _PARAM_DTYPE)
        return group_norm(x, scale, bias, norm_groups(c, self.num_groups))


@dataclass(frozen=True)
class LayerSet:
    """The layers a topology is built from. ``orbit`` is the length of the group axis of a field."""

    stem: Any
    head: Any
    conv: Any
    up: Any
    norm: Any
    orbit: int = 1


PLAIN_LAYERS = LayerSet(
    stem=lambda features, name: Conv(features, 3, name=name),
    head=lambda features, name: Conv(features, 3, name=name),
    conv=Conv,
    up=Upsample,
    norm=GroupNorm,
)


class ResidualBlock(nn.Module):
    features: int
    num_groups: int
    layers: LayerSet

    @nn.compact
    def __call__(self, x: Array) -> Array:
        lay = self.layers
        h = lay.conv(self.features, 3, name="conv1")(gelu(lay.norm(self.num_groups, name="norm1")(x)))
        h = lay.conv(self.features, 3, name="conv2")(gelu(lay.norm(self.num_groups, name="norm2")(h)))
        if x.shape[-1] != self.features * lay.orbit:
            x = lay.conv(self.features, 1, name="shortcut")(x)
        return x + h


class UNetTopology(nn.Module):
    hidden: int
    multipliers: tuple[int, ...]
    blocks: int
    middle_blocks: int
    num_groups: int
    layers: LayerSet
    out_channels: int = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        lay = self.layers
        h = lay.stem(self.hidden, name="stem")(x)
        skips = []
        width = self.hidden
        for level, mult in enumerate(self.multipliers):
            width = self.hidden * mult
            for b in range(self.blocks):
                h = ResidualBlock(width, self.num_groups, lay, name=f"down{level}_block{b}")(h)
            skips.append(h)
            h = lay.conv(width, 2, 2, name=f"down{level}_pool")(h)
        for b in range(self.middle_blocks):
            h = ResidualBlock(width, self.num_groups, lay, name=f"middle_block{b}")(h)
        for level in reversed(range(len(self.multipliers))):
            width = self.hidden * self.multipliers[level]
            # the transposed conv already narrows to the level's width, as in the classic U-Net
            h = lay.up(width, name=f"up{level}_upsample")(h)
            h = jnp.concatenate([h, skips[level]], axis=-1)
            for b in range(self.blocks):
                h = ResidualBlock(width, self.num_groups, lay, name=f"up{level}_block{b}")(h)
        h = gelu(lay.norm(self.num_groups, name="head_norm")(h))
        return lay.head(self.out_channels, name="head")(h)


def unet(
    hidden: int = 24,
    multipliers: tuple[int, ...] = (1, 2, 4, 16),
    blocks: int = 1,
    middle_blocks: int = 2,
    num_groups: int = 8,
) -> UNetTopology:
    """The plain (non-equivariant) residual UNet."""
    return UNetTopology(hidden, tuple(multipliers), blocks, middle_blocks, num_groups, PLAIN_LAYERS)

