"""The prepared GPU check of the overlap engine at the study's scale (issue 22): run it when a GPU is lent.

    python benchmarks/device_check.py               # paper UNet, 128x128, batch 64: under 8 minutes on an H100/H200
    python benchmarks/device_check.py --dry-run     # the same steps on a tiny UNet at 32x32 (any CPU, a minute)

Never run by CI. Every figure is written to ``benchmarks/records/device_check.json`` as soon
as it is measured, so that a run cut short still leaves what it measured.

1. The time of one Gauss-Newton product, float64 and float32, at 1, 4 and 16 vectors per
   product (16 is vmapped in pieces of the plan's product chunk where it would not fit),
   and the device memory of the linearisation and of one product against the plan's
   figures (``symgrad.diagnostics.plan``).
2. The operator rounding estimate ``GaussNewtonBlocks.rounding()`` in both precisions.
3. 20 block Lanczos steps on the 64 v's (the plan's first chunk: the v's, or as many of
   them as fit) at lambda = 1e-6, float64, with the largest relative Gauss-Radau energy
   bound per step, and the device's peak memory against the plan's peak.

Excludes: JAX start-up; the model is untrained (random init): times and memory do not
depend on the weights, the bounds per step do (they show the solver runs, not the study's
convergence).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

RECORD = Path(__file__).resolve().parent / "records" / "device_check.json"


def _memory():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_in_use", 0)), int(stats.get("peak_bytes_in_use", 0))


def _products(model, params, x, y, dtype, rng):
    """Part 1 and 2: the plan, the linearisation's memory, the products' times and memory, the rounding."""
    import jax
    import jax.numpy as jnp

    from symgrad.diagnostics import OverlapConfig
    from symgrad.diagnostics.ggn import GaussNewtonBlocks
    from symgrad.diagnostics.overlap import _reused, plan_devices
    from symgrad.diagnostics.plan import plan_overlap
    from symgrad.groups import named_group

    name, batch = jnp.dtype(dtype).name, x.shape[0]
    config = OverlapConfig(precision=name, damping=1e-6)
    plan = plan_overlap(model.apply, params, samples=batch, input_shape=x.shape[1:], curvature_batch=batch,
                        reused=_reused(named_group("d4", x.shape[1]), jnp.asarray(x), jnp.asarray(y)), config=config,
                        devices=plan_devices(config), dtype=dtype)
    entry = {"plan": plan.to_dict()}
    before, _ = _memory()
    op = GaussNewtonBlocks(model.apply, params, jnp.asarray(x, dtype), np.ones(4), damping=1e-6,
                           vectors_per_product=plan.product_chunk)
    entry["linearisation_bytes_measured"] = _memory()[0] - before
    entry["linearisation_bytes_planned"] = [v for k, v in plan.parts.items() if k.startswith("linearisation")][0]
    entry["products"] = {}
    for k in (1, 4, 16):
        block = jnp.asarray(rng.normal(size=(k, op.n_params)), dtype)
        jax.block_until_ready(op(block))  # compile
        base, _ = _memory()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            jax.block_until_ready(op(block))
            times.append(time.perf_counter() - t0)
        entry["products"][k] = {"seconds_per_vector": min(times) / k, "vectors_per_product": min(k, plan.product_chunk),
                                "peak_bytes_in_use": _memory()[1], "bytes_in_use_before": base}
        print(f"{name}: {k:2d} vectors: {min(times) / k * 1e3:8.2f} ms per product", flush=True)
    entry["operator_rounding"] = op.rounding()
    print(f"{name}: operator rounding estimate {entry['operator_rounding']:.3g}", flush=True)
    return entry, op, plan


def _block_steps(model, params, op, plan, x, y, steps) -> dict:
    """Part 3: block Lanczos steps on the plan's first chunk of v's, the bound per step, the peak."""
    import jax.numpy as jnp

    from symgrad.diagnostics.certify import Targets, radau_shift
    from symgrad.diagnostics.gradients import per_example_gradients
    from symgrad.diagnostics.solvers import BlockLanczos

    batch = x.shape[0]
    v = np.concatenate([np.asarray(per_example_gradients(model.apply, params, x[i:i + 8], y[i:i + 8], np.ones(4),
                                                         chunk_size=8)) for i in range(0, batch, 8)])
    rows = list(plan.chunks[0].v_rows) or list(range(batch))
    bounds = []
    t0 = time.perf_counter()

    def progress(step, products, worst):
        bounds.append({"step": int(step), "products": int(products), "worst_over_target": float(worst),
                       "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  block step {step}: {products} products, worst bound {worst:.3g} x target", flush=True)

    sol = BlockLanczos(max_steps=steps, basis_bytes=plan.basis_bytes).solve(op, jnp.asarray(v[rows]), Targets(1e-6),
                                                                             progress=progress)
    return {"right_hand_sides": len(rows), "bounds": bounds, "result": sol.result.value,
            "device_peak_bytes": _memory()[1], "planned_peak_bytes": plan.peak,
            "radau_shift": radau_shift(1e-6, op.rounding())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="tiny UNet at 32x32, batch 4, 3 block steps (any machine)")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from symgrad.io import git_commit, package_versions
    from symgrad.models.registry import build

    preset, res, batch, steps = ("tiny", 32, 4, 3) if args.dry_run else ("paper", 128, 64, args.steps)
    record = {"benchmark": "device_check", "command": "benchmarks/device_check.py" + (" --dry-run" if args.dry_run else ""),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(), "host": platform.node(),
              "device": str(jax.devices()[0].device_kind), "devices": len(jax.devices()),
              "package_versions": package_versions(), "model": f"unet {preset} {res}x{res}", "batch": batch,
              "note": "untrained UNet (times and memory do not depend on the weights); JAX start-up excluded"}
    out = RECORD.with_name("device_check_dry_run.json") if args.dry_run else RECORD

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=str) + "\n")

    model = build("unet", preset, res)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, res, res, 4))
    y = x + 0.1 * rng.normal(size=x.shape)
    t_start = time.perf_counter()
    for dtype in (jnp.float32, jnp.float64):
        params = model.init(jax.random.PRNGKey(0), dtype=dtype)
        entry, op, plan = _products(model, params, x, y, dtype, rng)
        record[jnp.dtype(dtype).name] = entry
        save()
        if dtype == jnp.float64:
            entry["block_steps"] = _block_steps(model, params, op, plan, x, y, steps)
            save()
        del op
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"wrote {out} ({record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
