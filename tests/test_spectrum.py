"""The spectrum probe against the dense eigen-decomposition of G, and `symgrad spectrum`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from symgrad.cli import main
from symgrad.diagnostics.ggn import GaussNewtonBlocks
from symgrad.diagnostics.spectrum import predicted_products, probe_spectrum
from test_overlap_helpers import SIGMA, dense_ggn, small_cnn, transitions

DAMPINGS = (1e-6, 1e-3, 1e-1, 1.0)


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        apply, params = small_cnn(jax.random.PRNGKey(0))
        x, _ = transitions(jax.random.PRNGKey(1), n_samples=3)
        g = dense_ggn(apply, params, x, SIGMA)
    return apply, params, x, g, np.linalg.eigvalsh(g)


def _exact_terms(g, n_vectors, seed, lam):
    """z^T G (G + lam)^-1 z for the probe's own Rademacher vectors (their mean is what it estimates)."""
    z = np.asarray(jax.random.rademacher(jax.random.PRNGKey(seed), (n_vectors, g.shape[0]), dtype=jnp.float64))
    m = np.linalg.solve(g + lam * np.eye(len(g)), g)
    return np.einsum("ip,pq,iq->i", z, m, z), np.einsum("ip,pq,iq->i", z, g, z)


@pytest.mark.parametrize("steps", [3, 120])
def test_probe_intervals_contain_the_exact_values(x64, problem, steps):
    apply, params, x, g, ev = problem
    op = GaussNewtonBlocks(apply, params, x, SIGMA)
    s = probe_spectrum(op, n_vectors=4, steps=steps, dampings=DAMPINGS, seed=3)
    assert 0 < s["ggn_products"] <= 4 * s["probe_steps"]  # blocks shrink once the space is exhausted
    for lam, lo, hi in zip(DAMPINGS, s["effective_dimension_lower"], s["effective_dimension_upper"]):
        terms, _ = _exact_terms(g, 4, 3, lam)
        slack = 1e-8 * len(g)
        assert lo - slack <= terms.mean() <= hi + slack, (lam, lo, terms.mean(), hi)
    _, zgz = _exact_terms(g, 4, 3, 1.0)
    np.testing.assert_allclose(s["trace"], zgz.mean(), rtol=1e-10)  # Hutchinson from the first block, exactly
    if steps == 120:  # the Krylov space exhausts range(G) (rank <= 192 outputs): everything is exact
        np.testing.assert_allclose(s["top_eigenvalues"][:5], ev[::-1][:5], rtol=1e-9)
        width = np.asarray(s["effective_dimension_upper"]) - np.asarray(s["effective_dimension_lower"])
        assert width.max() < 1e-6
        # the Hutchinson average is within a few standard errors of the true trace and d_eff
        assert abs(s["trace"] - ev.sum()) < 5 * s["trace_stderr"]
        true = [np.sum(ev / (ev + lam)) for lam in DAMPINGS]
        err = np.abs(np.asarray(s["effective_dimension"]) - true)
        assert (err < 5 * np.asarray(s["effective_dimension_stderr"]) + 1e-6).all()
    else:  # three steps cannot resolve small damping: the interval says so
        assert s["effective_dimension_upper"][0] - s["effective_dimension_lower"][0] > 1.0
    lo, hi = predicted_products(s, 1e-3)
    assert 0 < lo <= hi


def test_probe_needs_the_undamped_operator(x64, problem):
    apply, params, x, _, _ = problem
    with pytest.raises(ValueError, match="undamped"):
        probe_spectrum(GaussNewtonBlocks(apply, params, x, SIGMA, damping=1e-3))


def test_spectrum_command(tiny_trained_run, tmp_path, capsys):
    run_dir, data_file = tiny_trained_run
    out = tmp_path / "spectrum.nc"
    assert main(["spectrum", "--run", str(run_dir), "--data", str(data_file), "--samples", "2",
                 "--probe-vectors", "2", "--lanczos-steps", "3", "--damping", "1e-3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top eigenvalues" in text and "Gauss-Newton products" in text and "wrote" in text
    with xr.open_dataset(out) as ds:
        assert ds.ggn_top_eigenvalues.dims == ("eigen_index",) and ds.attrs["spectrum_probe_ggn_products"] == 6
        assert 1e-3 in ds.damping_grid.values and (ds.effective_dimension_lower <= ds.effective_dimension_upper).all()
    assert main(["spectrum", "--run", str(run_dir), "--samples", "0"]) == 2
    assert "--samples" in capsys.readouterr().err
