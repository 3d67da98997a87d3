"""The Python API example runs as written and gives what it promises."""

import runpy
from pathlib import Path

import jax
import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model.py"


def test_own_model_example(capsys):
    assert not jax.config.jax_enable_x64  # as a user's session: float32 by default
    module = runpy.run_path(str(EXAMPLE))  # defines main() without running it
    eq, ov = module["main"]()
    assert not jax.config.jax_enable_x64  # the diagnostics restored the caller's setting
    out = capsys.readouterr().out
    assert "equivariance (float64)" in out and "overlaps (float64" in out
    # float32 Flax parameters, computed in float64
    assert eq.attrs["compute_dtype"] == "float64" and ov.attrs["dtype"] == "float64"
    assert float(eq["equivariance_error"].sel(element="e").max()) == 0.0
    assert float(eq["equivariance_error"].sel(element="r").min()) > 1e-6  # a plain CNN is not D4-equivariant
    # the trained model beats persistence on the test transitions
    assert float(eq["test_error"].mean()) < float(eq["persistence_error"].mean())
    # every chi value certified at lambda = 1e-6, and the identity's cosine is 1 within its bound
    assert ov.attrs["n_flagged"] == 0
    ident = ov.sel(element="e")
    assert np.all(np.abs(ident["overlap_cosine_chi"].values - 1) <= ident["overlap_cosine_chi_bound"].values + 1e-12)
