"""Benchmark: the memory plan against what the process really holds, and its product factor.

    python benchmarks/plan.py                 # three UNets on this CPU, then the paper models' products
    python benchmarks/plan.py --quick         # the two smaller UNets only

(1) Plan against reality. For three UNets (tiny 22.5k, a small with hidden 8 (about 430k),
and the small preset 1.7M parameters; untrained, 32x32, N = 4, D4 with the cosine, float64,
lambda 1e-6), each in a fresh process: ``compute_overlaps`` with the plan's defaults except
``--basis-memory`` (a few blocks, so that the stored basis fills within the steps run) and
``--max-iterations`` (a short solve: memory, not accuracy, is measured). The process's
peak RSS (``ru_maxrss``) is compared with the plan's host figure (``host_peak_bytes``:
every counted array plus what the process held when the plan was made). The claim: within
30%.

(2) The product's transient. XLA's own memory analysis of the compiled Gauss-Newton
product (``ggn._apply_blocks_jit``) at 1, 2 and 4 vectors, against ``plan.product_transient``,
for the tiny UNet and the paper UNet and ViT at 128x128, batch 64 (compiled for this CPU,
not run: GPU buffers may differ, ``benchmarks/device_check.py`` measures them there).

Excludes: JAX start-up; the untrained models make no difference to memory. Writes
``benchmarks/records/plan.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RECORD = Path(__file__).resolve().parent / "records" / "plan.json"
MODELS = {  # name -> (preset, overrides)
    "unet tiny": ("tiny", {}),
    "unet small, hidden 8": ("small", {"hidden": 8}),
    "unet small": ("small", {}),
}


def _worker(spec: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from symgrad.diagnostics import OverlapConfig
    from symgrad.diagnostics.overlap import compute_overlaps
    from symgrad.groups import named_group
    from symgrad.models.registry import build

    model = build("unet", spec["preset"], spec["resolution"], **spec["overrides"])
    params = model.init(jax.random.PRNGKey(0), dtype=jax.numpy.float64)
    rng = np.random.default_rng(0)
    shape = (spec["samples"], spec["resolution"], spec["resolution"], 4)
    x, y = rng.normal(size=shape), rng.normal(size=shape)
    n_params = sum(int(a.size) for a in jax.tree_util.tree_leaves(params))
    block_gb = 32 * n_params * 8 / 2**30
    config = OverlapConfig(damping=1e-6, rtol=1e-6, max_iterations=spec["steps"], probe_vectors=0,
                           basis_memory=spec["basis_blocks"] * block_gb)
    t0 = time.perf_counter()
    ds = compute_overlaps(model.apply, params, x, y, np.ones(4), named_group("d4", spec["resolution"]), config)
    plan = json.loads(ds.attrs["memory_plan"])
    return {"n_params": n_params, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "planned_host_bytes": plan["host_peak_bytes"], "planned_runtime_bytes": plan["host_runtime_bytes"],
            "plan": plan, "ggn_products": int(ds.attrs["ggn_products"])}


def _products(name, preset, resolution, batch) -> dict:
    """XLA's temp bytes of the compiled product at 1, 2, 4 vectors, and the plan's figure."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from symgrad.diagnostics import ggn
    from symgrad.diagnostics.plan import linearisation_bytes, product_transient
    from symgrad.models.registry import build

    model = build(name, preset, resolution)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dtype=jnp.float64))
    x = jax.ShapeDtypeStruct((batch, resolution, resolution, 4), jnp.float64)
    flat, pred, f_jvp = jax.eval_shape(ggn._linearize_flat, model.apply, params, x)
    lin = ggn._Linearization(flat, pred, f_jvp, jax.ShapeDtypeStruct((4,), jnp.float64))
    state = (lin, jax.ShapeDtypeStruct((), jnp.float64))
    lin_bytes = linearisation_bytes(model.apply, params, x.shape, jnp.float64)
    out = {"n_params": int(flat.shape[0]), "linearisation_bytes": lin_bytes, "vectors": {}}
    for k in (1, 2, 4):
        block = jax.ShapeDtypeStruct((k, flat.shape[0]), jnp.float64)
        compiled = ggn._apply_blocks_jit.lower(None, None, ggn.Layout(), state, block).compile()
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
        out["vectors"][k] = {"xla_temp_bytes": temp, "planned_bytes": product_transient(k, lin_bytes),
                             "xla_temp_per_linearisation": round(temp / lin_bytes, 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="the two smaller UNets; no paper-scale compiles")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--products", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.products:
        print(json.dumps(_products(*json.loads(args.products))))
        return 0

    def child(flag, payload):
        proc = subprocess.run([sys.executable, __file__, flag, json.dumps(payload)], stdout=subprocess.PIPE,
                              text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rss = {}
    for name, (preset, overrides) in list(MODELS.items())[:2 if args.quick else 3]:
        spec = {"preset": preset, "overrides": overrides, "resolution": 32, "samples": 4, "steps": 12,
                "basis_blocks": 6}
        r = child("--worker", spec)
        r["ratio_measured_to_planned"] = round(r["peak_rss_bytes"] / r["planned_host_bytes"], 3)
        rss[name] = r
        print(f"{name:22s} P = {r['n_params']:>9,}: peak RSS {r['peak_rss_bytes'] / 2**30:6.3f} GiB, planned "
              f"{r['planned_host_bytes'] / 2**30:6.3f} GiB (of which runtime {r['planned_runtime_bytes'] / 2**30:.3f})"
              f": ratio {r['ratio_measured_to_planned']:.2f}", flush=True)
    products = {}
    cases = [("unet", "tiny", 32, 4)] + ([] if args.quick else [("unet", "paper", 128, 64), ("vit", "paper", 128, 64)])
    for case in cases:
        key = f"{case[0]} {case[1]} {case[2]}x{case[2]} batch {case[3]}"
        products[key] = child("--products", list(case))
        for k, v in products[key]["vectors"].items():
            print(f"{key:32s} {k} vectors: XLA temp {v['xla_temp_bytes'] / 2**30:8.3f} GiB, planned "
                  f"{v['planned_bytes'] / 2**30:8.3f} GiB ({v['xla_temp_per_linearisation']:.2f} linearisations)",
                  flush=True)
    from symgrad.io import git_commit, package_versions

    record = {"benchmark": "plan", "command": "benchmarks/plan.py" + (" --quick" if args.quick else ""),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
              "host": platform.node(), "package_versions": package_versions(),
              "note": "untrained UNets, 32x32, N = 4, D4 with the cosine, float64, lambda 1e-6, 12 block steps, "
                      "basis capped at 6 blocks; peak RSS of a fresh process (ru_maxrss) against the plan's host "
                      "figure; JAX start-up included in both (the plan counts what the process held when planned)",
              "rss": rss, "product_transient": products}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
