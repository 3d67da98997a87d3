"""Registry: build any model from a name, a preset and overrides; the Model record."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from symgrad.errors import SymgradError
from symgrad.loss import check_scales
from symgrad.names import MODELS, PRESETS
from symgrad.models.gcnn import gcnn
from symgrad.models.relaxed import COEFFICIENTS, relaxed
from symgrad.models.unet import unet
from symgrad.models.vit import POSITION_EMBEDDINGS, ViT


# Exact configurations; docs/models.md derives the parameter counts of each.
_CONV_PRESETS = {
    "unet": {
        "tiny": dict(hidden=8, multipliers=[1, 2], blocks=1, middle_blocks=1, num_groups=4),
        "small": dict(hidden=16, multipliers=[1, 2, 4, 8], blocks=1, middle_blocks=2, num_groups=8),
        "paper": dict(hidden=24, multipliers=[1, 2, 4, 16], blocks=1, middle_blocks=2, num_groups=8),
    },
    # widths in regular fields (8 channels each): hidden / sqrt(8) of the UNet's keeps the
    # parameter count close while the activations are ~2.8x wider
    "gcnn": {
        "tiny": dict(hidden=2, multipliers=[1, 2], blocks=1, middle_blocks=1, num_groups=2),
        "small": dict(hidden=6, multipliers=[1, 2, 4, 8], blocks=1, middle_blocks=2, num_groups=2),
        "paper": dict(hidden=8, multipliers=[1, 2, 4, 16], blocks=1, middle_blocks=2, num_groups=8),
    },
    # the G-CNN with every filter a combination of 2 banks: twice the filter parameters per
    # field, so the widths are the G-CNN's / sqrt(2) (the compute of a G-CNN of those widths)
    "relaxed": {
        "tiny": dict(hidden=2, multipliers=[1, 2], blocks=1, middle_blocks=1, num_groups=2, filter_banks=2),
        "small": dict(hidden=4, multipliers=[1, 2, 4, 8], blocks=1, middle_blocks=2, num_groups=2, filter_banks=2),
        "paper": dict(hidden=6, multipliers=[1, 2, 4, 16], blocks=1, middle_blocks=2, num_groups=8, filter_banks=2),
    },
}
_VIT_PRESETS = {
    "tiny": dict(patch=4, width=32, depth=2, heads=4, mlp_ratio=4, position_embedding="learned"),
    "small": dict(patch=8, width=128, depth=4, heads=4, mlp_ratio=4, position_embedding="learned"),
    "paper": dict(patch=8, width=256, depth=6, heads=8, mlp_ratio=4, position_embedding="learned"),
}
_COMMON = dict(residual=True)


def preset_config(name: str, preset: str) -> dict[str, Any]:
    """The hyper-parameters of a preset (a fresh, JSON-able dict)."""
    if name not in MODELS:
        raise SymgradError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if preset not in PRESETS:
        raise SymgradError(f"unknown preset {preset!r} for model {name!r}; choose one of: {', '.join(PRESETS)}")
    table = _VIT_PRESETS[preset] if name == "vit" else _CONV_PRESETS[name][preset]
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in table.items()}
    cfg.update(_COMMON)
    return cfg


@dataclass(frozen=True, eq=False)
class Model:
    """A built surrogate architecture.

    ``apply(params, x)`` maps a *normalised* state ``(batch, nx, ny, 4)`` to the normalised
    next state; with ``config["residual"]`` (the default) it is ``x + net(x)``.
    ``init(key, dtype=None)`` returns the parameter pytree (nested dicts of arrays; float32
    unless ``dtype`` is given). ``downsampling_factor``: the grid must be divisible by it,
    and the conv models are exactly equivariant to periodic shifts by its multiples.
    """

    name: str
    preset: str
    resolution: int
    config: dict
    downsampling_factor: int
    module: nn.Module
    init: Callable[..., PyTree]
    apply: Callable[[PyTree, Array], Array]


def _validate(name: str, cfg: dict, resolution: int) -> int:
    def bad(msg: str) -> SymgradError:
        return SymgradError(f"model {name!r}: {msg}")

    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise bad(f"resolution must be a positive integer, got {resolution!r}")
    if cfg.get("residual") not in (True, False):
        raise bad(f"residual must be true or false, got {cfg.get('residual')!r}")
    if name == "vit":
        for key in ("patch", "width", "depth", "heads", "mlp_ratio"):
            if not isinstance(cfg[key], (int, np.integer)) or cfg[key] < 1:
                raise bad(f"{key} must be a positive integer, got {cfg[key]!r}")
        if cfg["width"] % cfg["heads"]:
            raise bad(f"width {cfg['width']} is not divisible by heads {cfg['heads']}; change one of them")
        if cfg["position_embedding"] not in POSITION_EMBEDDINGS:
            raise bad(
                f"unknown position_embedding {cfg['position_embedding']!r}; choose one of: {', '.join(POSITION_EMBEDDINGS)}"
            )
        if cfg["position_embedding"] == "sincos" and cfg["width"] % 4:
            raise bad(f"sincos position embeddings need a width divisible by 4, got {cfg['width']}")
        factor = int(cfg["patch"])
        what = f"patch size {factor}"
    else:
        mults = cfg["multipliers"]
        if not mults or any(not isinstance(m, (int, np.integer)) or m < 1 for m in mults):
            raise bad(f"multipliers must be a non-empty list of positive integers, got {mults!r}")
        for key in ("hidden", "blocks", "num_groups") + (("filter_banks",) if name == "relaxed" else ()):
            if not isinstance(cfg[key], (int, np.integer)) or cfg[key] < 1:
                raise bad(f"{key} must be a positive integer, got {cfg[key]!r}")
        if not isinstance(cfg["middle_blocks"], (int, np.integer)) or cfg["middle_blocks"] < 0:
            raise bad(f"middle_blocks must be a non-negative integer, got {cfg['middle_blocks']!r}")
        factor = 2 ** len(mults)
        what = f"down-sampling factor {factor} (2 ** {len(mults)} levels)"
    if resolution % factor:
        raise bad(
            f"resolution {resolution} is not divisible by the {what}; "
            f"use a multiple of {factor} (e.g. {factor * max(1, round(resolution / factor))}) or change the preset"
        )
    return factor


def _module(name: str, cfg: dict) -> nn.Module:
    if name == "vit":
        keys = ("patch", "width", "depth", "heads", "mlp_ratio", "position_embedding")
        return ViT(**{k: cfg[k] for k in keys})
    args = (cfg["hidden"], tuple(cfg["multipliers"]), cfg["blocks"], cfg["middle_blocks"], cfg["num_groups"])
    if name == "relaxed":
        return relaxed(*args, cfg["filter_banks"])
    return (unet if name == "unet" else gcnn)(*args)


# std of a standard normal truncated to [-2, 2]: flax's truncated lecun init divides by it
_TRUNCATED_STD = 0.87962566103423978


def _leaf_std(path: tuple, shape: tuple[int, ...]) -> float | str:
    """The init of one parameter, mirroring the initializers the modules declare."""
    leaf = path[-1].key
    if leaf in ("bias",):
        return "zeros"
    if leaf in ("scale", COEFFICIENTS):  # the relaxed model's coefficients start equal: exactly equivariant
        return "ones"
    if leaf == "position":
        return 0.02
    fan_in = math.prod(shape[:-1])
    if leaf == "projection_kernel":
        fan_in *= 8  # the G-CNN head sums the 8 transformed copies of its filter
    elif leaf != "kernel":
        raise AssertionError(f"no init rule for parameter {path}")
    return 1.0 / math.sqrt(fan_in) / _TRUNCATED_STD


def _fused_init(module: nn.Module, size: int) -> Callable[..., PyTree]:
    """``init(key, dtype=None)`` drawing every random parameter from *one* truncated normal.

    Flax's ``module.init`` draws each parameter with its own threefry call; XLA on CPU
    compiles each of those separately and slowly (tens of seconds for a tiny model on a
    busy machine). One draw, sliced and scaled per leaf, gives the same distributions
    (truncated LeCun normal, zeros, ones, N(0, 0.02) position embeddings) in one small
    program, and still works under jit, vmap and ``jax.eval_shape``.
    """
    dummy = jax.ShapeDtypeStruct((1, size, size, 4), jnp.float32)

    def shapes() -> PyTree:
        return jax.eval_shape(lambda k, x: nn.meta.unbox(module.init(k, x)["params"]), jax.random.key(0), dummy)

    cache: list = []

    def draw(key: PRNGKeyArray) -> PyTree:
        if not cache:
            cache.append(shapes())
        tree = cache[0]
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        rules = [_leaf_std(path, leaf.shape) for path, leaf in leaves]
        n_random = sum(math.prod(leaf.shape) for (_, leaf), r in zip(leaves, rules) if not isinstance(r, str))
        flat = jax.random.truncated_normal(key, -2.0, 2.0, (max(n_random, 1),), jnp.float32)
        out, offset = [], 0
        for (_, leaf), rule in zip(leaves, rules):
            if rule == "zeros":
                out.append(jnp.zeros(leaf.shape, jnp.float32))
            elif rule == "ones":
                out.append(jnp.ones(leaf.shape, jnp.float32))
            else:
                size_ = math.prod(leaf.shape)
                out.append(flat[offset : offset + size_].reshape(leaf.shape) * jnp.float32(rule))
                offset += size_
        return jax.tree_util.tree_unflatten(treedef, out)

    draw_jit = jax.jit(draw)

    def init(key: PRNGKeyArray, dtype: Any = None) -> PyTree:
        if isinstance(key, (int, np.integer)):
            key = jax.random.key(key)
        params = draw_jit(key)
        if dtype is not None:
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        return params

    return init


def build(name: str, preset: str = "tiny", resolution: int = 128, **overrides: Any) -> Model:
    """Build model ``name`` (``unet``, ``vit``, ``gcnn``, ``relaxed``) from ``preset`` with hyper-parameter overrides.

    Raises :class:`SymgradError` for unknown names, presets or override keys, and for a
    resolution the architecture cannot tile (not divisible by 2**levels or the patch size).
    """
    cfg = preset_config(name, preset)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise SymgradError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(sorted(cfg))}"
        )
    for key, value in overrides.items():
        cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
    factor = _validate(name, cfg, resolution)
    resolution = int(resolution)
    module = _module(name, cfg)
    residual = bool(cfg["residual"])
    learned_grid = name == "vit" and cfg["position_embedding"] == "learned"
    # conv-model parameter shapes do not depend on the grid: initialise on the smallest one
    init_size = resolution if name == "vit" else factor

    init = _fused_init(module, init_size)
    def apply(params: PyTree, x: Float[Array, "b nx ny 4"]) -> Float[Array, "b nx ny 4"]:
        if x.ndim != 4 or x.shape[-1] != 4:
            raise SymgradError(f"model {name!r} expects states of shape (batch, nx, ny, 4), got {x.shape}")
        if x.shape[1] % factor or x.shape[2] % factor:
            raise SymgradError(
                f"model {name!r}: grid {x.shape[1]}x{x.shape[2]} is not divisible by {factor}; resample the data"
            )
        if learned_grid and x.shape[1:3] != (resolution, resolution):
            raise SymgradError(
                f"ViT with learned position embeddings was built for {resolution}x{resolution}, got "
                f"{x.shape[1]}x{x.shape[2]}; build it with resolution={x.shape[1]} or position_embedding='sincos'"
            )
        out = module.apply({"params": params}, x)
        return x + out.astype(x.dtype) if residual else out

    config = {"name": name, "preset": preset, "resolution": resolution, **cfg}
    return Model(name, preset, resolution, config, factor, module, init, apply)


def build_from_config(config: dict) -> Model:
    """Inverse of ``Model.config``: rebuild the same architecture (e.g. from a checkpoint's config)."""
    cfg = dict(config)
    name, preset, resolution = cfg.pop("name"), cfg.pop("preset"), cfg.pop("resolution")
    return build(name, preset, resolution, **cfg)


def parameter_count(params: PyTree) -> int:
    """Number of scalar parameters (works on arrays and on ``jax.eval_shape`` results)."""
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def surrogate_apply(
    model_apply: Callable[[PyTree, Array], Array], sigma: Float[Array, "4"]
) -> Callable[[PyTree, Float[Array, "*b nx ny 4"]], Float[Array, "*b nx ny 4"]]:
    """The physical one-step map ``f(params, x) = sigma * model_apply(params, x / sigma)``.

    ``sigma`` (shape (4,), one shared scale for both momentum components, so that the map
    stays D4-equivariant when the network is) is cast to the state's dtype.
    """
    sigma_np = check_scales(sigma)

    def f(params: PyTree, x: Float[Array, "*b nx ny 4"]) -> Float[Array, "*b nx ny 4"]:
        s = jnp.asarray(sigma_np, dtype=x.dtype)
        return s * model_apply(params, x / s)

    return f
