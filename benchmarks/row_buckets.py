"""Rounding block sizes up to a few row counts (``symgrad.diagnostics._rows``): does it pay?

    python benchmarks/row_buckets.py

A block Lanczos solve deflates directions, so its blocks shrink from step to step and every
jitted kernel (the Gauss-Newton product above all) would compile once per block size.
This script runs the same chi overlap (a tiny UNet at random initialisation, 16x16, N = 4
samples, D4, curvature batch of one state, lambda = 1e-6, rtol = 1e-6) twice, each in a
fresh process with an empty compilation cache: with the row buckets, and with them
switched off (every block its own size). It prints and records wall time, XLA compile
time and count, and Gauss-Newton products, in ``benchmarks/records/row_buckets.json``.
Excluded: JAX's start-up and the model's initialisation (timed from the call of
``compute_overlaps``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax import monitoring

compiles = {"n": 0, "seconds": 0.0}
def listen(event, seconds, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles["n"] += 1
        compiles["seconds"] += seconds
monitoring.register_event_duration_secs_listener(listen)

if sys.argv[1] == "off":
    import symgrad.diagnostics.ggn as ggn
    import symgrad.diagnostics.solvers._lanczos as lanczos
    ggn.bucket = lanczos.bucket = lambda k: k   # every block its own size

from symgrad import euler, groups, models
from symgrad.diagnostics import OverlapConfig, compute_overlaps
from symgrad.loss import channel_scales

q = euler.solve(euler.sample_initial("CE-RP", jax.random.key(0), 4, 16), jnp.array([0.0, 0.05])).states
x, y = np.asarray(q[:, 0]), np.asarray(q[:, 1])
sigma = channel_scales(y)
model = models.build("unet", "tiny", resolution=16)
params = model.init(jax.random.key(1))
f = models.surrogate_apply(model.apply, sigma)
before = dict(compiles)
t0 = time.perf_counter()
ds = compute_overlaps(f, params, x, y, sigma, groups.named_group("d4"),
                      OverlapConfig(damping=1e-6, rtol=1e-6, curvature_samples=1), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "compiles": compiles["n"] - before["n"],
                  "compile_seconds": compiles["seconds"] - before["seconds"],
                  "ggn_products": int(ds.attrs["ggn_products"]), "n_flagged": int(ds.attrs["n_flagged"]),
                  "max_relative_bound": float(ds.attrs["max_relative_bound"])}))
"""


def main() -> int:
    from symgrad.io import provenance

    results = {}
    for variant in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True,
                             env={**__import__("os").environ, "JAX_ENABLE_COMPILATION_CACHE": "false"})
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"row buckets {variant:3}: {r['seconds']:6.1f} s, {r['compiles']:4d} compilations "
              f"({r['compile_seconds']:.1f} s), {r['ggn_products']} products, {r['n_flagged']} flagged")
    record = {"benchmark": "row_buckets", **provenance(), "results": results,
              "speedup": results["off"]["seconds"] / results["on"]["seconds"],
              "note": "tiny UNet (random init), 16x16, N = 4, D4, curvature batch 1, lambda 1e-6, rtol 1e-6, "
                      "2-core CPU, fresh process and no compilation cache per variant; JAX start-up excluded"}
    path = Path(__file__).parent / "records" / "row_buckets.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"speed-up {record['speedup']:.2f}x; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
