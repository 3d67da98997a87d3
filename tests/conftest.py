"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Enable float64 for one test only (exactness checks), then restore the default."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
