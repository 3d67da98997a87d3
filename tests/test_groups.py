"""Group axioms, the array actions that realise them, and their commutation with the solver."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symgrad import groups
from symgrad.errors import SymgradError
from symgrad.groups import (
    D4_COMPOSITION,
    D4_ELEMENTS,
    D4_INVERSE,
    D4_MOMENTUM,
    act_d4,
    act_d4_index,
    d4_compose,
    d4_inverse,
    named_group,
    scale,
    scalings,
    translate,
    translations,
)
from symgrad.loss import smse

N = 6


def random_states(shape=(2, N, N), seed=0, dtype=jnp.float32):
    """Physical, non-symmetric states: cellwise random density, velocity and pressure."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    rho = jax.random.uniform(k1, shape, dtype, 0.5, 1.5)
    vel = jax.random.uniform(k2, shape + (2,), dtype, -0.5, 0.5)
    p = jax.random.uniform(k3, shape, dtype, 0.5, 1.5)
    m = rho[..., None] * vel
    e = p / 0.4 + 0.5 * rho * jnp.sum(vel**2, axis=-1)
    return jnp.concatenate([rho[..., None], m, e[..., None]], axis=-1)


# --- tables ------------------------------------------------------------------------------

def test_d4_tables_satisfy_group_axioms():
    n = len(D4_ELEMENTS)
    table = D4_COMPOSITION
    assert table.shape == (n, n)
    # closure: every product is an element; each row and column is a permutation (Latin square)
    assert np.all((table >= 0) & (table < n))
    for row in range(n):
        assert sorted(table[row]) == list(range(n))
        assert sorted(table[:, row]) == list(range(n))
    e = D4_ELEMENTS.index("e")
    assert np.array_equal(table[e], np.arange(n)) and np.array_equal(table[:, e], np.arange(n))
    for a in range(n):
        assert table[a, D4_INVERSE[a]] == e and table[D4_INVERSE[a], a] == e
    for a, b, c in itertools.product(range(n), repeat=3):
        assert table[table[a, b], c] == table[a, table[b, c]]
    # D4 is not abelian, and the names agree with the string-level functions
    assert not np.array_equal(table, table.T)
    for a, b in itertools.product(D4_ELEMENTS, repeat=2):
        assert D4_ELEMENTS[table[D4_ELEMENTS.index(a), D4_ELEMENTS.index(b)]] == d4_compose(a, b)
    assert [D4_ELEMENTS[i] for i in D4_INVERSE] == [d4_inverse(a) for a in D4_ELEMENTS]
    # the defining relations r^4 = s^2 = e, s r s = r^-1
    assert d4_compose("r", d4_compose("r", d4_compose("r", "r"))) == "e"
    assert d4_compose("s", "s") == "e"
    assert d4_compose("s", d4_compose("r", "s")) == "r3"


def test_d4_momentum_matrices_are_a_representation():
    for a, b in itertools.product(range(8), repeat=2):
        assert np.array_equal(D4_MOMENTUM[D4_COMPOSITION[a, b]], D4_MOMENTUM[a] @ D4_MOMENTUM[b])
    assert np.linalg.det(D4_MOMENTUM[D4_ELEMENTS.index("s")]) == -1


@pytest.mark.parametrize("n,stride", [(6, 1), (6, 2), (8, 4)])
def test_translation_tables_satisfy_group_axioms(n, stride):
    g = translations(n, "x", stride)
    table = g.composition_table()
    m = len(g)
    assert np.all(table >= 0), "a stride that divides n gives a closed set"
    e = g.index(g.identity)
    for a in range(m):
        assert table[e, a] == a and table[a, e] == a
        assert table[a, g.index(g.inverse(g.elements[a]))] == e
    for a, b, c in itertools.product(range(m), repeat=3):
        assert table[table[a, b], c] == table[a, table[b, c]]


def test_translation_partial_stride_is_marked_not_closed():
    assert np.any(translations(6, "y", 4).composition_table() == -1)


def test_scaling_law_axioms():
    g = scalings((0.5, 2.0, 1.0))
    table = g.composition_table()
    assert table[0, 1] == 2  # 0.5 * 2 = 1
    assert table[1, 1] == -1  # 4 is not in the sample of factors
    for a, b, c in itertools.product(g.elements, repeat=3):
        assert np.isclose(g.compose(g.compose(a, b), c), g.compose(a, g.compose(b, c)))
        assert g.compose(a, g.inverse(a)) == pytest.approx(g.identity)


# --- actions -----------------------------------------------------------------------------

def test_conventions_on_index_level():
    q = random_states((N, N))
    i, j = 1, 4
    r = act_d4("r", q)
    assert r[i, j, 0] == q[j, N - 1 - i, 0] and r[i, j, 3] == q[j, N - 1 - i, 3]
    assert r[i, j, 1] == -q[j, N - 1 - i, 2] and r[i, j, 2] == q[j, N - 1 - i, 1]
    s = act_d4("s", q)
    assert s[i, j, 0] == q[N - 1 - i, j, 0]
    assert s[i, j, 1] == -q[N - 1 - i, j, 1] and s[i, j, 2] == q[N - 1 - i, j, 2]
    tx, ty = translate(q, kx=2), translate(q, ky=2)
    assert jnp.array_equal(tx[i, j], q[(i - 2) % N, j]) and jnp.array_equal(ty[i, j], q[i, (j - 2) % N])


def test_d4_actions_realise_the_table():
    q = random_states()
    for a, b in itertools.product(D4_ELEMENTS, repeat=2):
        np.testing.assert_array_equal(act_d4(d4_compose(a, b), q), act_d4(a, act_d4(b, q)), err_msg=f"{a}{b}")
    np.testing.assert_array_equal(act_d4("e", q), q)
    # every non-identity element moves a generic state
    for a in D4_ELEMENTS[1:]:
        assert not np.array_equal(act_d4(a, q), q)


def test_indexed_d4_action_equals_named_action_under_jit_and_vmap():
    q = random_states((3, N, N))
    batched = jax.jit(jax.vmap(act_d4_index, in_axes=(0, None)))(jnp.arange(8), q)
    for i, name in enumerate(D4_ELEMENTS):
        np.testing.assert_array_equal(batched[i], act_d4(name, q))
        np.testing.assert_array_equal(jax.jit(act_d4_index)(i, q), act_d4(name, q))
        np.testing.assert_array_equal(named_group("d4").act_index(i, q), act_d4(name, q))


@pytest.mark.parametrize("name", ["translate-x", "translate-y"])
def test_translations_realise_the_law(name):
    g = named_group(name, N, stride=1)
    q = random_states()
    for a, b in itertools.product(g.elements, repeat=2):
        np.testing.assert_array_equal(g.act(g.compose(a, b), q), g.act(a, g.act(b, q)))
    idx = jax.jit(jax.vmap(g.act_index, in_axes=(0, None)))(jnp.arange(len(g)), q)
    for i, k in enumerate(g.elements):
        np.testing.assert_array_equal(idx[i], g.act(k, q))
    np.testing.assert_array_equal(g.act(N, q), q)  # periodic


def test_scaling_realises_the_law(x64):
    g = scalings((0.5, 0.8, 1.25, 2.0))
    q = random_states(dtype=jnp.float64)
    for a, b in itertools.product(g.elements, repeat=2):
        np.testing.assert_allclose(g.act(g.compose(a, b), q), g.act(a, g.act(b, q)), rtol=1e-15)
    for i, a in enumerate(g.elements):
        np.testing.assert_array_equal(jax.jit(g.act_index)(i, q), scale(q, a))


@pytest.mark.parametrize("shape", [(N, N), (2, N, N), (2, 3, N, N)])
def test_actions_work_on_any_batch_shape(shape):
    q = random_states(shape)
    all_named = jax.jit(lambda s: jnp.stack([act_d4(name, s) for name in D4_ELEMENTS]))(q)
    all_indexed = jax.vmap(act_d4_index, in_axes=(0, None))(jnp.arange(8), q)
    np.testing.assert_array_equal(all_indexed, all_named)
    per_state = jax.vmap(lambda s: jnp.stack([act_d4(name, s) for name in D4_ELEMENTS]))(q.reshape(-1, N, N, 4))
    np.testing.assert_array_equal(jnp.moveaxis(per_state, 0, 1).reshape(all_named.shape), all_named)
    for i, name in enumerate(D4_ELEMENTS):
        np.testing.assert_array_equal(all_named[i], act_d4(name, q))
    assert translate(q, 1, 2).shape == q.shape


def test_non_square_grid_rotation_is_a_user_error():
    q = jnp.zeros((4, 6, 4))
    with pytest.raises(SymgradError, match="square"):
        act_d4("r", q)
    np.testing.assert_array_equal(act_d4("s", q), q)  # reflections are fine


def test_named_group_errors_and_defaults():
    assert named_group("d4").elements == D4_ELEMENTS
    assert named_group("translate-x", 8, stride=2).elements == (0, 2, 4, 6)
    assert named_group("scale").elements == groups.DEFAULT_SCALE_FACTORS
    with pytest.raises(SymgradError, match="choose one of"):
        named_group("rotations")
    with pytest.raises(SymgradError, match="stride"):
        named_group("translate-y", 8, stride=0)
    with pytest.raises(SymgradError, match="positive"):
        named_group("scale", factors=(1.0, -2.0))


# --- loss invariance ---------------------------------------------------------------------

def test_smse_invariant_under_d4_and_translations_and_scales_under_scaling(x64):
    pred, target = random_states(seed=1, dtype=jnp.float64), random_states(seed=2, dtype=jnp.float64)
    sigma = jnp.asarray([1.1, 0.3, 0.3, 2.5])
    base = smse(pred, target, sigma)
    for name in D4_ELEMENTS:
        np.testing.assert_allclose(smse(act_d4(name, pred), act_d4(name, target), sigma), base, rtol=1e-14)
    for kx, ky in [(1, 0), (0, 3), (2, 5)]:
        np.testing.assert_allclose(smse(translate(pred, kx, ky), translate(target, kx, ky), sigma), base, rtol=1e-14)
    for a in (0.5, 2.0, 3.0):
        np.testing.assert_allclose(smse(scale(pred, a), scale(target, a), sigma), a**2 * base, rtol=1e-14)
    # the invariance needs the shared momentum scale: with unequal scales a rotation changes SMSE
    bad = jnp.asarray([1.1, 0.3, 0.6, 2.5])
    assert not np.allclose(smse(act_d4("r", pred), act_d4("r", target), bad), smse(pred, target, bad), rtol=1e-6)


# --- commutation with the Euler solver ---------------------------------------------------

def _forget_momentum_rotation(name, q):
    """A deliberately wrong action: moves the cells but leaves the momentum vector alone."""
    k, m = groups.d4_parts(name)
    if m:
        q = jnp.flip(q, axis=-3)
    return jnp.rot90(q, k, axes=(-3, -2))


@pytest.fixture(scope="module")
def euler():
    from symgrad import euler
    return euler


_STEP_CACHE = {}


def _step_setup(euler, n=12):
    """A float64 state, the jitted solver step and the stepped state (compiled once per module)."""
    if n not in _STEP_CACHE:
        q = random_states((2, n, n), seed=3, dtype=jnp.float64)
        config = euler.EulerConfig()
        dt = float(jnp.min(euler.max_stable_dt(q, config)))
        step = jax.jit(lambda s: euler.step(s, dt, config))
        _STEP_CACHE[n] = q, step, step(q)
    return _STEP_CACHE[n]


def test_d4_commutes_with_the_solver_step(x64, euler):
    q, step, stepped = _step_setup(euler)
    assert float(jnp.max(jnp.abs(stepped - q))) > 1e-3, "the step must move the state"
    for name in D4_ELEMENTS:
        np.testing.assert_allclose(step(act_d4(name, q)), act_d4(name, stepped), rtol=1e-12, atol=1e-13,
                                   err_msg=name)


def test_wrong_action_does_not_commute_with_the_solver_step(x64, euler):
    q, step, stepped = _step_setup(euler)
    for name in ("r", "s", "r3s"):
        err = float(jnp.max(jnp.abs(step(_forget_momentum_rotation(name, q)) - _forget_momentum_rotation(name, stepped))))
        assert err > 1e-4, name


def test_translations_commute_with_the_solver_step(x64, euler):
    q, step, stepped = _step_setup(euler)
    n = q.shape[-2]
    for kx, ky in [(k, 0) for k in range(n)] + [(0, k) for k in range(n)] + [(3, 7)]:
        np.testing.assert_allclose(step(translate(q, kx, ky)), translate(stepped, kx, ky), rtol=1e-12, atol=1e-13)


def test_scaling_commutes_with_the_solver(x64, euler):
    # dt scales identically (velocities and sound speed are invariant), so a solve to a
    # fixed time takes the same steps; one batched solve holds every case.
    q = random_states((1, 8, 8), seed=4, dtype=jnp.float64)
    factors = (0.5, 2.0)
    wrong = q.at[..., 0].multiply(2.0)  # density only: not a symmetry
    batch = jnp.concatenate([q] + [scale(q, a) for a in factors] + [wrong])
    out = euler.solve(batch, jnp.asarray([0.0, 0.02]), euler.EulerConfig())
    assert bool(out.ok.all())
    ref = out.states[0]
    assert float(jnp.max(jnp.abs(ref[-1] - ref[0]))) > 1e-3
    for i, a in enumerate(factors, start=1):
        np.testing.assert_allclose(out.states[i], a * ref, rtol=1e-11, atol=1e-12)
    assert not np.allclose(out.states[-1, -1, ..., 1:], ref[-1, ..., 1:], rtol=1e-3)
