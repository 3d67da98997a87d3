"""Surrogate architectures: residual UNet, ViT, a D4-equivariant group CNN and its relaxed form.

``build(name, preset, resolution, **overrides)`` returns a :class:`Model` with a pure
``apply(params, x)``; see ``docs/models.md`` for the exact presets.
"""

from symgrad.models.registry import (
    MODELS as MODELS,
    PRESETS as PRESETS,
    Model as Model,
    build as build,
    build_from_config as build_from_config,
    parameter_count as parameter_count,
    preset_config as preset_config,
    surrogate_apply as surrogate_apply,
)
from symgrad.models.relaxed import coefficient_spread as coefficient_spread

__all__ = [
    "MODELS",
    "PRESETS",
    "Model",
    "build",
    "build_from_config",
    "coefficient_spread",
    "parameter_count",
    "preset_config",
    "surrogate_apply",
]
