"""Benchmark: chi-metric gradient overlaps over D4 for a freshly initialised surrogate.

    .venv/bin/python benchmarks/overlap.py --model unet --preset small --samples 8 --resolution 32

Times ``compute_overlaps`` end to end (compilation included, reported separately from a
warm single Gauss-Newton product) and records the number of Gauss-Newton products, CG
iterations, certified bounds and flags in ``benchmarks/records/overlap.json`` (one entry
per device kind and configuration, replaced on rerun). Runs unchanged on CPU or GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

RECORD = Path(__file__).resolve().parent / "records" / "overlap.json"


def _states(n, res, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.5, 1.5, (n, res, res, 1))
    m = rng.uniform(-0.3, 0.3, (n, res, res, 2))
    p = rng.uniform(0.5, 1.5, (n, res, res, 1))
    e = p / 0.4 + 0.5 * np.sum(m**2, axis=-1, keepdims=True) / rho
    return np.concatenate([rho, m, e], axis=-1)


def _finite(value):
    import math

    value = float(value)
    return value if math.isfinite(value) else "inf"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="unet")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--damping", type=float, default=1e-6)
    ap.add_argument("--max-steps", type=int, default=10_000)
    ap.add_argument("--rhs-chunk", type=int, default=None)
    ap.add_argument("--grad-chunk", type=int, default=8)
    ap.add_argument("--precision", choices=("float64", "float32"), default="float64")
    ap.add_argument("--group", default="d4")
    ap.add_argument("--record", default=str(RECORD))
    ap.add_argument("--products-only", action="store_true",
                    help="time one batched Gauss-Newton product block only (no solves)")
    args = ap.parse_args(argv)

    import jax

    if args.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from symgrad.diagnostics.ggn import linearize_ggn
    from symgrad.diagnostics.overlap import compute_overlaps
    from symgrad.groups import named_group
    from symgrad.loss import channel_scales
    from symgrad.models import build, parameter_count, surrogate_apply

    dtype = jnp.float64 if args.precision == "float64" else jnp.float32
    net = build(args.model, args.preset, resolution=args.resolution)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), net.init(jax.random.key(0)))
    x = _states(args.samples, args.resolution, 0)
    y = x + 0.05 * _states(args.samples, args.resolution, 1)
    sigma = channel_scales(y)
    apply = surrogate_apply(net.apply, sigma)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    n_params = parameter_count(params)

    # One warm batched Gauss-Newton product block (N right-hand sides), for per-product cost.
    rhs = jnp.ones((args.samples, n_params), dtype)
    sig = jnp.asarray(sigma, dtype)

    @jax.jit
    def product_block(params, x, v):
        # one linearisation, then N Gauss-Newton products as one vmapped jvp/transpose
        lin = linearize_ggn(apply, params, x, sig)
        return jax.vmap(lin.matvec)(v)

    jax.block_until_ready(product_block(params, x, rhs))
    t = time.perf_counter()
    jax.block_until_ready(product_block(params, x, rhs))
    per_block = time.perf_counter() - t

    dev = jax.devices()[0]
    if args.products_only:
        print(json.dumps({"model": args.model, "preset": args.preset, "n_params": int(n_params),
                          "samples": args.samples, "resolution": args.resolution,
                          "precision": args.precision, "device": f"{dev.platform}:{dev.device_kind}",
                          "seconds_per_batched_ggn_product_block": round(per_block, 5),
                          "seconds_per_ggn_product": round(per_block / args.samples, 6)}, indent=2))
        return 0

    t0 = time.perf_counter()
    ds = compute_overlaps(apply, params, x, y, sigma, named_group(args.group, args.resolution),
                          metric="chi", damping=args.damping, rtol=args.rtol, max_steps=args.max_steps,
                          rhs_chunk_size=args.rhs_chunk, grad_chunk_size=args.grad_chunk, progress=True)
    wall = time.perf_counter() - t0

    entry = {
        "benchmark": "overlap",
        "model": args.model, "preset": args.preset, "n_params": int(n_params),
        "samples": args.samples, "resolution": args.resolution, "group": args.group,
        "rtol": args.rtol, "damping": args.damping, "precision": args.precision,
        "rhs_chunk": args.rhs_chunk, "max_steps": args.max_steps,
        "device": f"{dev.platform}:{dev.device_kind}", "host": platform.node(),
        "jax": jax.__version__,
        "wall_s": round(wall, 3),
        "seconds_per_batched_ggn_product_block": round(per_block, 5),
        "seconds_per_ggn_product": round(per_block / args.samples, 6),
        "ggn_products": int(ds.attrs["ggn_products"]),
        "cg_iterations_v": {"min": int(ds.cg_iterations_v.min()), "max": int(ds.cg_iterations_v.max())},
        "cg_iterations_u": {"min": int(ds.cg_iterations_u.min()), "max": int(ds.cg_iterations_u.max())},
        # strict JSON has no Infinity: an infinite bound is written as the string "inf"
        "max_cosine_bound": _finite(ds.overlap_cosine_chi_bound.max()),
        "max_frobenius_bound": _finite(ds.overlap_frobenius_chi_bound.max()),
        "n_flagged": int(ds.attrs["n_flagged"]),
        "cosine_chi_median_by_element": {str(e): float(np.median(ds.overlap_cosine_chi.sel(element=e)))
                                         for e in ds.element.values},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(args.record)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["device"], r["model"], r["preset"], r["samples"], r["resolution"],  # noqa: E731
                     r["rtol"], r["damping"], r["precision"], r["group"])
    records = [r for r in records if key(r) != key(entry)] + [entry]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
