"""Vision transformer surrogate: patchify, pre-LN encoder, per-token linear decoder, unpatchify.

    tokens = Dense(width)(patches of p x p x 4)        # = a p x p stride-p conv
    tokens += position embedding (learned | sincos | none)
    depth x [ t += MHSA(LN(t));  t += MLP(LN(t)) ]     # MLP: width -> mlp_ratio*width -> width, GELU
    t = LN(t);  patches = Dense(p*p*4)(t);  unpatchify

Without a position embedding the network is equivariant to periodic shifts by multiples of
the patch size (attention is permutation-equivariant over tokens); a learned embedding
breaks that, which is one of the comparisons of the study.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from symgrad.models._layers import gelu

POSITION_EMBEDDINGS = ("learned", "sincos", "none")
_PARAM_DTYPE = jnp.float32


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, param_dtype=_PARAM_DTYPE, name=name)


def _layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, param_dtype=_PARAM_DTYPE, name=name)


def patchify(x: Float[Array, "b nx ny c"], p: int) -> Float[Array, "b tx ty pc"]:
    b, nx, ny, c = x.shape
    x = x.reshape(b, nx // p, p, ny // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, nx // p, ny // p, p * p * c)


def unpatchify(t: Float[Array, "b tx ty pc"], p: int, c: int) -> Float[Array, "b nx ny c"]:
    b, tx, ty, _ = t.shape
    t = t.reshape(b, tx, ty, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return t.reshape(b, tx * p, ty * p, c)


def sincos_embedding(tx: int, ty: int, width: int) -> np.ndarray:
    """2-D sin-cos embedding (MAE style): half the width encodes the x index, half the y index."""
    if width % 4:
        raise ValueError("sincos position embedding needs a width divisible by 4")
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    gx, gy = np.meshgrid(np.arange(tx), np.arange(ty), indexing="ij")
    ax = gx.reshape(-1, 1) * omega
    ay = gy.reshape(-1, 1) * omega
    return np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1).reshape(tx, ty, width)


class SelfAttention(nn.Module):
    width: int
    heads: int

    @nn.compact
    def __call__(self, t: Array) -> Array:
        b, n, w = t.shape
        d = w // self.heads
        qkv = _dense(3 * w, "qkv")(t).reshape(b, n, 3, self.heads, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(d, q.dtype))
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, w)
        return _dense(w, "out")(out)


class EncoderBlock(nn.Module):
    width: int
    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, t: Array) -> Array:
        t = t + SelfAttention(self.width, self.heads, name="attention")(_layer_norm("norm1")(t))
        h = _dense(self.mlp_ratio * self.width, "mlp_in")(_layer_norm("norm2")(t))
        return t + _dense(self.width, "mlp_out")(gelu(h))


class ViT(nn.Module):
    patch: int = 8
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: int = 4
    position_embedding: str = "learned"
    out_channels: int = 4

    @nn.compact
    def __call__(self, x: Float[Array, "b nx ny 4"]) -> Float[Array, "b nx ny 4"]:
        p = self.patch
        patches = patchify(x, p)
        b, tx, ty, _ = patches.shape
        t = _dense(self.width, "patch_embed")(patches)
        if self.position_embedding == "learned":
            pos = self.param("position", nn.initializers.normal(0.02), (tx, ty, self.width), _PARAM_DTYPE)
            t = t + pos.astype(t.dtype)
        elif self.position_embedding == "sincos":
            t = t + jnp.asarray(sincos_embedding(tx, ty, self.width), t.dtype)
        t = t.reshape(b, tx * ty, self.width)
        for i in range(self.depth):
            t = EncoderBlock(self.width, self.heads, self.mlp_ratio, name=f"block{i}")(t)
        t = _layer_norm("final_norm")(t)
        t = _dense(p * p * self.out_channels, "decoder")(t)
        return unpatchify(t.reshape(b, tx, ty, -1), p, self.out_channels)
