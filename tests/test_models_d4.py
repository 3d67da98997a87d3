"""The p4m filter-transform bookkeeping (symgrad.models._d4) against direct constructions.

Each filter transform is checked against the definition it encodes, built from *field*
transformations instead of filter transformations:

    conv(F, T_h psi) = h . conv(h^-1 . F, psi)

so a wrong index permutation, a wrong inverse or a wrong vector matrix fails here before
it can hide inside a whole network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from symgrad.groups import D4_ELEMENTS, act_d4, d4_compose, d4_inverse
from symgrad.models import _d4
from symgrad.models._layers import circular_conv, upsample_2x2

G = range(_d4.ORDER)


def _rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float64)


def _move(g, f):
    """Move a plain (non-typed) field on axes (-3, -2) by g, without touching channels."""
    k, m = _d4.PARTS[g]
    if m:
        f = jnp.flip(f, axis=-3)
    return jnp.rot90(f, k, axes=(-3, -2))


def act_regular(g, f):
    """Act with g on a regular field ``(..., nx, ny, C * 8)``: move the grid, then permute
    each group axis by ``_d4.REGULAR_GATHER`` (the layout the G-CNN's layers assume)."""
    moved = _move(g, f)
    grouped = moved.reshape(*moved.shape[:-1], -1, _d4.ORDER)
    return grouped[..., _d4.REGULAR_GATHER[g]].reshape(moved.shape)


def test_tables_match_symgrad_groups():
    for a in G:
        assert D4_ELEMENTS[_d4.INVERSE[a]] == d4_inverse(D4_ELEMENTS[a])
        for b in G:
            assert D4_ELEMENTS[_d4.COMPOSE[a, b]] == d4_compose(D4_ELEMENTS[a], D4_ELEMENTS[b])


def test_state_rep_and_spatial_reproduce_act_d4(x64):
    q = _rand(0, (2, 6, 6, 4))
    for g in G:
        direct = jnp.einsum("pc,bxyc->bxyp", _d4.state_rep(g), _move(g, q))
        assert_allclose(direct, act_d4(D4_ELEMENTS[g], q), atol=1e-14)


def test_spatial_on_3x3_filters_explicit_indices():
    k = np.arange(9.0).reshape(3, 3)
    # r: s'[i, j] = s[j, n-1-i]; s: s'[i, j] = s[n-1-i, j]  (docs/design.md section 3)
    r = np.array([[k[j, 2 - i] for j in range(3)] for i in range(3)])
    s = np.array([[k[2 - i, j] for j in range(3)] for i in range(3)])
    assert_allclose(_d4.spatial(jnp.asarray(k), 1), r)
    assert_allclose(_d4.spatial(jnp.asarray(k), 4), s)
    # r s: reflect first, then rotate
    rs = np.array([[s[j, 2 - i] for j in range(3)] for i in range(3)])
    assert_allclose(_d4.spatial(jnp.asarray(k), 5), rs)


def test_regular_action_is_a_group_action(x64):
    f = _rand(1, (1, 4, 4, 3 * 8))
    for a in G:
        for b in G:
            lhs = act_regular(a, act_regular(b, f))
            assert_allclose(lhs, act_regular(int(_d4.COMPOSE[a, b]), f), atol=0)
    # the regular representation permutes the group axis: e acts trivially, r does not
    assert_allclose(act_regular(0, f), f)
    assert not np.allclose(act_regular(1, f), _move(1, f))


def test_regular_gather_explicit():
    # (g.F)[h] = F[g^-1 h]; for g = r: r^-1 r^k = r^(k-1) and r^-1 (r^k s) = r^(k-1) s
    assert list(_d4.REGULAR_GATHER[1]) == [3, 0, 1, 2, 7, 4, 5, 6]
    # s^-1 = s, s r^k = r^-k s, s (r^k s) = r^-k
    assert list(_d4.REGULAR_GATHER[4]) == [4, 7, 6, 5, 0, 3, 2, 1]


def test_lift_filter_against_direct_construction(x64):
    @jax.jit
    def both(x, psi):
        out = circular_conv(x, _d4.lift_filter(psi)).reshape(2, 6, 6, 5, 8)
        refs = [_move(h, circular_conv(act_d4(D4_ELEMENTS[_d4.INVERSE[h]], x), psi)) for h in G]
        return out, jnp.stack(refs, axis=-1)

    out, ref = both(_rand(2, (2, 6, 6, 4)), _rand(3, (3, 3, 4, 5)))
    assert_allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("kernel", [1, 3])
def test_group_filter_against_direct_construction(x64, kernel):
    @jax.jit
    def both(f, psi):
        out = circular_conv(f, _d4.group_filter(psi)).reshape(2, 6, 6, 2, 8)
        flat = psi.reshape(kernel, kernel, 3 * 8, 2)
        refs = [_move(h, circular_conv(act_regular(int(_d4.INVERSE[h]), f), flat)) for h in G]
        return out, jnp.stack(refs, axis=-1)

    out, ref = both(_rand(4, (2, 6, 6, 3 * 8)), _rand(5, (kernel, kernel, 3, 8, 2)))
    assert_allclose(out, ref, atol=1e-12)


def test_project_filter_against_direct_construction(x64):
    @jax.jit
    def both(f, psi):
        out = circular_conv(f, _d4.project_filter(psi))
        ref = 0.0
        for h in G:
            at_identity = act_regular(int(_d4.INVERSE[h]), f).reshape(2, 6, 6, 3, 8)[..., 0]
            ref = ref + jnp.einsum("pc,bxyc->bxyp", _d4.state_rep(h), _move(h, circular_conv(at_identity, psi)))
        return out, ref

    out, ref = both(_rand(6, (2, 6, 6, 3 * 8)), _rand(7, (3, 3, 3, 4)))
    assert_allclose(out, ref, atol=1e-12)


def test_strided_and_transposed_group_convs_are_equivariant(x64):
    @jax.jit
    def pairs(f, down, up):
        down, up = _d4.group_filter(down), _d4.group_filter(up)
        out = []
        for g in G:
            gf = act_regular(g, f)
            out.append((circular_conv(gf, down, 2), act_regular(g, circular_conv(f, down, 2))))
            out.append((upsample_2x2(gf, up), act_regular(g, upsample_2x2(f, up))))
        return out

    for lhs, rhs in pairs(_rand(8, (1, 8, 8, 2 * 8)), _rand(9, (2, 2, 2, 8, 3)), _rand(10, (2, 2, 2, 8, 3))):
        assert_allclose(lhs, rhs, atol=1e-12)


def test_untransformed_filter_breaks_equivariance(x64):
    """Control: the same conv with a filter *not* run through group_filter is not equivariant."""
    f = _rand(11, (1, 6, 6, 2 * 8))
    plain = _rand(12, (3, 3, 2 * 8, 2 * 8))
    g = 1
    lhs = circular_conv(act_regular(g, f), plain)
    rhs = act_regular(g, circular_conv(f, plain))
    assert not np.allclose(lhs, rhs, atol=1e-6)
