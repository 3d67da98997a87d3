"""The names the command line and the library share, in one jax-free place.

A command lists these as its choices, and the library checks against the same tuples, so
a new model or preset is added here and nowhere else.
"""

MODELS: tuple[str, ...] = ("unet", "vit", "gcnn")
PRESETS: tuple[str, ...] = ("tiny", "small", "paper")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
