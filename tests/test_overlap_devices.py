"""The overlap engine on several devices (JAX_NUM_CPU_DEVICES=4, in a subprocess): the curvature
batch and the blocks sharded with NamedSharding give the one-device values within their bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CHILD = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_overlap_helpers import SIGMA, small_cnn, transitions
from symgrad.diagnostics import OverlapConfig
from symgrad.diagnostics.overlap import compute_overlaps
from symgrad.groups import named_group

assert len(jax.devices()) == 4, jax.devices()
D4 = named_group("d4", 4)
x, y = transitions(jax.random.PRNGKey(1), n_samples=4)
out = {}
cases = {
    # 446 parameters: every vector padded by two zeros to split over 4 devices; the v's and
    # the elements' rows split across chunks of 2 right-hand sides
    "small_cnn_padded_split": (small_cnn(jax.random.PRNGKey(0)), dict(rtol=1e-8, rhs_chunk=2)),
    # the same with a deflation space recycled from 8 of chunk 0's Lanczos vectors: Z, AZ and
    # the Schur complement's rounding estimate sharded and padded like every other block
    "small_cnn_deflated": (small_cnn(jax.random.PRNGKey(0)), dict(rtol=1e-8, rhs_chunk=2, deflation_vectors=8)),
}
assert sum(int(a.size) for a in jax.tree_util.tree_leaves(cases["small_cnn_padded_split"][0][1])) % 4
for name, ((apply, params), extra) in cases.items():
    res = {}
    for devices in (1, 4):
        ds = compute_overlaps(apply, params, x, y, SIGMA, D4, OverlapConfig(damping=1e-3, devices=devices, **extra))
        res[devices] = {
            "devices": int(ds.attrs["devices"]), "n_flagged": int(ds.attrs["n_flagged"]),
            "plan_devices": json.loads(ds.attrs["memory_plan"])["devices"],
            "deflation_vectors": int(ds.attrs.get("deflation_vectors", 0)),
            **{v: ds[v].values.tolist() for v in ("overlap_matrix_chi", "overlap_matrix_chi_bound",
                                                  "overlap_cosine_chi", "overlap_cosine_chi_bound",
                                                  "chi_uu", "chi_uu_bound")},
        }
    out[name] = res
print("RESULT" + json.dumps(out))
"""


def test_four_devices_match_one_within_their_bounds():
    import numpy as np

    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(TESTS)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    for name, res in out.items():
        one, four = res["1"], res["4"]
        assert (one["devices"], four["devices"], four["plan_devices"]) == (1, 4, 4), name
        assert one["n_flagged"] == four["n_flagged"] == 0, name
        # the Ritz vectors of the 8 Lanczos vectors chunk 0 keeps (those above the floor)
        assert (0 < one["deflation_vectors"] <= 8 and 0 < four["deflation_vectors"] <= 8) if "deflated" in name else (
            one["deflation_vectors"] == four["deflation_vectors"] == 0), name
        for value, bound in [("overlap_matrix_chi", "overlap_matrix_chi_bound"),
                             ("overlap_cosine_chi", "overlap_cosine_chi_bound"), ("chi_uu", "chi_uu_bound")]:
            a, b = np.asarray(one[value]), np.asarray(four[value])
            allowed = np.asarray(one[bound]) + np.asarray(four[bound])
            assert (np.abs(a - b) <= allowed).all(), (name, value, np.max(np.abs(a - b) - allowed))
            # and the two runs are not the same computation by accident of a fallback
        assert np.abs(np.asarray(one["chi_uu"])).min() > 0


@pytest.mark.parametrize("devices", [3])
def test_devices_that_do_not_divide_the_curvature_batch_are_refused(x64, devices):
    from symgrad.diagnostics import OverlapConfig
    from symgrad.diagnostics.overlap import overlap_plan
    from symgrad.diagnostics.plan import PlanError
    from symgrad.groups import named_group
    import jax
    from test_overlap_helpers import SIGMA, small_cnn, transitions  # noqa: F401

    apply, params = small_cnn(jax.random.PRNGKey(0))
    x, y = transitions(jax.random.PRNGKey(1), n_samples=4)
    with pytest.raises(PlanError, match="does not split over 3 devices"):
        overlap_plan(apply, params, x, y, named_group("d4", 4),
                     OverlapConfig(devices=devices, device_memory="1GB"))
