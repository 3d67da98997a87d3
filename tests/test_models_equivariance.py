"""Exact symmetry properties of the architectures, with random parameters in float64.

Random parameters include non-trivial norm scales and biases (a freshly initialised
network has zero biases and unit scales, which could hide a bias that breaks a symmetry).
Each check runs the network once on a batch of all transformed inputs inside one jitted
function, so a model costs one compilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symgrad.groups import D4_ELEMENTS, act_d4, translate
from symgrad.models import build


def _random_params(model, seed=0):
    # numpy noise: per-leaf jax.random calls would each compile a threefry kernel on CPU
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.key(seed))
    return jax.tree.map(lambda p: jnp.asarray(np.asarray(p, np.float64) + 0.3 * rng.standard_normal(p.shape)), params)


def _rot_as_scalars(q):
    # moves the grid but forgets to rotate the momentum vector: not a symmetry
    return jnp.rot90(q, 1, axes=(-3, -2))


def _errors(model, params, x, transforms):
    """Relative error ||f(T x) - T f(x)|| / ||T f(x)|| for every transform T, in one jitted call."""

    @jax.jit
    def run(params, x):
        n = x.shape[0]
        batch = jnp.concatenate([x] + [t(x) for t in transforms.values()])
        out = model.apply(params, batch)
        y = out[:n]
        errs = {"identity_change": jnp.linalg.norm(y - x) / jnp.linalg.norm(x)}
        for i, (name, t) in enumerate(transforms.items()):
            lhs, rhs = out[(i + 1) * n : (i + 2) * n], t(y)
            errs[name] = jnp.linalg.norm(lhs - rhs) / jnp.linalg.norm(rhs)
        return errs, y.dtype == jnp.float64

    errs, is64 = run(params, x)
    assert bool(is64)
    return {k: float(v) for k, v in errs.items()}


@pytest.fixture
def state64(x64):
    return jax.random.normal(jax.random.key(7), (2, 16, 16, 4), jnp.float64)


def _d4(g):
    return lambda q: act_d4(g, q)


def _shift(kx, ky):
    return lambda q: translate(q, kx, ky)


def test_gcnn_is_exactly_d4_and_shift_equivariant(state64):
    model = build("gcnn", "tiny", 16)
    k = model.downsampling_factor
    transforms = {g: _d4(g) for g in D4_ELEMENTS}
    transforms.update({"t(k,0)": _shift(k, 0), "t(0,k)": _shift(0, k), "t(3k,2k)": _shift(3 * k, 2 * k)})
    # controls: a shift finer than the pooling, and a rotation that forgets the vector
    transforms.update({"t(1,0)": _shift(1, 0), "rot-as-scalars": _rot_as_scalars})
    errs = _errors(model, _random_params(model), state64, transforms)
    assert errs["identity_change"] > 0.1  # the network does something
    for name in list(D4_ELEMENTS) + ["t(k,0)", "t(0,k)", "t(3k,2k)"]:
        assert errs[name] < 1e-10, (name, errs[name])
    assert errs["t(1,0)"] > 1e-3
    assert errs["rot-as-scalars"] > 1e-3


def test_unet_is_shift_equivariant_only_on_its_stride(state64):
    model = build("unet", "tiny", 16)
    k = model.downsampling_factor
    transforms = {"t(k,0)": _shift(k, 0), "t(0,k)": _shift(0, k), "t(2k,3k)": _shift(2 * k, 3 * k)}
    transforms.update({"t(1,0)": _shift(1, 0), "t(0,k/2)": _shift(0, k // 2), "r": _d4("r"), "s": _d4("s")})
    errs = _errors(model, _random_params(model), state64, transforms)
    for name in ("t(k,0)", "t(0,k)", "t(2k,3k)"):
        assert errs[name] < 1e-10, (name, errs[name])
    for name in ("t(1,0)", "t(0,k/2)", "r", "s"):
        assert errs[name] > 1e-3, (name, errs[name])


@pytest.mark.parametrize("embedding, equivariant", [("none", True), ("learned", False)])
def test_vit_position_embedding_decides_shift_equivariance(state64, embedding, equivariant):
    model = build("vit", "tiny", 16, position_embedding=embedding)
    p = model.downsampling_factor
    errs = _errors(model, _random_params(model), state64, {"t(p,0)": _shift(p, 0)})
    assert (errs["t(p,0)"] < 1e-10) == equivariant, errs
