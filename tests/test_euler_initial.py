"""Initial-condition families: shapes, ranges, reproducibility, D4/translation invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from symgrad.errors import SymgradError
from symgrad.euler import conservative_to_primitive
from symgrad.euler.initial import (
    FAMILIES,
    CRPConfig,
    RPConfig,
    RPUIConfig,
    default_config,
    sample_initial,
)
from symgrad.groups import D4_ELEMENTS, act_d4, translate

N_STAT = 16  # resolution for the statistical tests


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_ranges_and_positivity(family):
    q = sample_initial(family, jax.random.key(0), 6, 32)
    assert q.shape == (6, 32, 32, 4) and q.dtype == jnp.float32
    rho, u, v, p = (np.asarray(a) for a in conservative_to_primitive(q, 1.4))
    cfg = default_config(family)
    tol = 1e-5
    assert rho.min() >= cfg.rho_range[0] - tol and rho.max() <= cfg.rho_range[1] + tol
    assert p.min() >= cfg.pressure_range[0] - tol and p.max() <= cfg.pressure_range[1] + tol
    assert np.abs(u).max() <= cfg.velocity_max + tol and np.abs(v).max() <= cfg.velocity_max + tol
    # p x p = 4 constant states per sample (pointwise at cell centres).
    for b in range(6):
        assert len(np.unique(rho[b])) <= cfg.partitions**2


@pytest.mark.parametrize("family", FAMILIES)
def test_reproducible_from_the_key(family):
    a = sample_initial(family, jax.random.key(7), 5, 16)
    b = sample_initial(family, jax.random.key(7), 5, 16)
    c = sample_initial(family, jax.random.key(8), 5, 16)
    prefix = sample_initial(family, jax.random.key(7), 3, 16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:3], prefix)  # chunked generation can resume
    assert not np.array_equal(a, c)
    assert len({np.asarray(x).tobytes() for x in a}) == 5  # samples differ


def test_curved_interfaces_bend():
    """CE-CRP / CE-RPUI interfaces are not straight lines; CE-RP ones are."""
    def n_distinct_columns(family, cfg):
        q = np.asarray(sample_initial(family, jax.random.key(1), 8, 64, cfg))
        return [len({q[b, :, j, 0].tobytes() for j in range(64)}) for b in range(8)]

    raw = dict(symmetrize=False)
    # Straight interfaces: at most 2 distinct column patterns (one per y-region).
    assert max(n_distinct_columns("CE-RP", RPConfig(**raw))) <= 2
    assert min(n_distinct_columns("CE-CRP", CRPConfig(**raw))) > 4
    assert min(n_distinct_columns("CE-RPUI", RPUIConfig(**raw))) > 2


@pytest.mark.parametrize(
    "kwargs",
    [{"partitions": 0}, {"jitter": 0.5}, {"rho_range": (0.0, 1.0)}, {"pressure_range": (2.0, 1.0)},
     {"velocity_max": -1.0}, {"n_modes": -1}, {"amplitude": 0.2}],
)
def test_config_validation(kwargs):
    with pytest.raises(SymgradError):
        RPConfig(**kwargs)


def test_unknown_family_and_bad_arguments():
    with pytest.raises(SymgradError, match="CE-RP"):
        sample_initial("CE-KH", jax.random.key(0), 1, 16)
    with pytest.raises(SymgradError):
        sample_initial("CE-RP", jax.random.key(0), 1, 3)
    with pytest.raises(SymgradError):
        sample_initial("CE-RP", jax.random.key(0), 1, 16, config={"partitions": 2})


def _features(q):
    """Scalar statistics of a state that a D4 element or a shift would change in law
    if the distribution were not invariant (positions, orientations, signs, joint structure)."""
    q = np.asarray(q, dtype=np.float64)
    rho, mx, my = q[..., 0], q[..., 1], q[..., 2]
    n = q.shape[-2]
    h = n // 2 - 1
    return {
        "same_region_x": (np.abs(rho[:, 0, :] - rho[:, h, :]) < 1e-7).mean(axis=-1),
        "same_region_y": (np.abs(rho[:, :, 0] - rho[:, :, h]) < 1e-7).mean(axis=-1),
        "rho_corner": rho[:, 0, 0] - rho[:, h, h],
        "mx_cell": mx[:, 1, 2],
        "mx_minus_my": (mx - my).mean(axis=(-2, -1)),
        "mx_times_rho_grad": (mx * (np.roll(rho, -1, axis=-2) - rho)).mean(axis=(-2, -1)),
    }


def _invariance_pvalues(samples):
    """Two-sample KS p-values of each feature: law of q (first half) vs law of g.q (second half)."""
    half = samples.shape[0] // 2
    a, b = samples[:half], samples[half:]
    fa = _features(a)
    moves = {g: (lambda q, g=g: act_d4(g, q)) for g in D4_ELEMENTS[1:]}
    moves["t(4,0)"] = lambda q: translate(q, 4, 0)
    moves["t(3,5)"] = lambda q: translate(q, 3, 5)
    out = {}
    for name, move in moves.items():
        fb = _features(move(jnp.asarray(b)))
        for feat in fa:
            out[(name, feat)] = stats.ks_2samp(fa[feat], fb[feat], method="asymp").pvalue
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_distribution_is_invariant_under_d4_and_translations(family):
    samples = sample_initial(family, jax.random.key(11), 1200, N_STAT)
    pvalues = _invariance_pvalues(samples)
    worst = min(pvalues, key=pvalues.get)
    # ~48 comparisons: a threshold of 1e-4 keeps a false alarm below 1 %.
    assert pvalues[worst] > 1e-4, (worst, pvalues[worst])


def test_invariance_test_detects_a_non_invariant_law():
    """Without the random symmetrisation the pattern has preferred positions: caught."""
    samples = sample_initial("CE-RP", jax.random.key(11), 1200, N_STAT, RPConfig(symmetrize=False))
    pvalues = _invariance_pvalues(samples)
    assert min(pvalues.values()) < 1e-6
    # And a law with a preferred direction (flow along +x only) is caught by D4.
    q = np.array(sample_initial("CE-RP", jax.random.key(12), 1200, N_STAT))
    q[..., 1] = np.abs(q[..., 1])
    assert min(v for (g, _), v in _invariance_pvalues(q).items() if g in D4_ELEMENTS) < 1e-6
