"""Layers shared by the convolutional models: periodic convolutions and group norms.

Every spatial operation is periodic (the Euler data live on the torus) and written with
explicit ``jnp.pad(mode="wrap")`` so that the G-CNN's own convolutions and the UNet's Flax
convolutions agree on what a circular 3x3 correlation is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def gelu(x: Array) -> Array:
    # exact erf GELU, as in PDEArena (torch.nn.GELU default)
    return jax.nn.gelu(x, approximate=False)


def circular_conv(
    x: Float[Array, "b nx ny cin"],
    kernel: Float[Array, "kh kw cin cout"],
    stride: int = 1,
) -> Float[Array, "b mx my cout"]:
    """Cross-correlation on the periodic grid; odd kernels are centred, stride-s kernels of size s tile."""
    kh, kw = kernel.shape[:2]
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if stride == 1:
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError("stride-1 circular convolutions need odd kernel sizes")
        x = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="wrap")
    elif (kh, kw) != (stride, stride):
        raise ValueError("strided convolutions here tile the grid: kernel size must equal the stride")
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def upsample_2x2(
    x: Float[Array, "b nx ny cin"], kernel: Float[Array, "2 2 cin cout"]
) -> Float[Array, "b nx2 ny2 cout"]:
    """Transposed 2x2 stride-2 convolution: coarse cell (a, b) paints fine cells (2a+d0, 2b+d1) with kernel[d0, d1]."""
    dtype = jnp.result_type(x, kernel)
    out = jnp.einsum("bxyc,pqco->bxpyqo", x.astype(dtype), kernel.astype(dtype))
    b, nx, _, ny, _, cout = out.shape
    return out.reshape(b, 2 * nx, 2 * ny, cout)


def group_norm(
    x: Float[Array, "b nx ny c"],
    scale: Float[Array, " f"],
    bias: Float[Array, " f"],
    num_groups: int,
    orbit: int = 1,
    eps: float = 1e-6,
) -> Float[Array, "b nx ny c"]:
    """GroupNorm whose statistics run over space, the channels of a group and (for G-CNN
    fields) the whole group orbit ``orbit`` of each channel, so that they are invariant.

    ``scale``/``bias`` have one entry per field (``c // orbit``), shared over the orbit.
    """
    b, nx, ny, c = x.shape
    fields = c // orbit
    dtype = jnp.result_type(x, scale)
    xg = x.astype(dtype).reshape(b, nx, ny, num_groups, fields // num_groups, orbit)
    mean = jnp.mean(xg, axis=(1, 2, 4, 5), keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4, 5), keepdims=True)
    xg = (xg - mean) * jax.lax.rsqrt(var + eps)
    xg = xg.reshape(b, nx, ny, fields, orbit)
    out = xg * scale.astype(dtype)[:, None] + bias.astype(dtype)[:, None]
    return out.reshape(b, nx, ny, c)


def norm_groups(channels: int, wanted: int) -> int:
    """Largest divisor of ``channels`` not above ``wanted`` (tiny models have few channels)."""
    for g in range(min(wanted, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1
