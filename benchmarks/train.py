"""Training throughput of the paper presets and the fraction of peak matmul throughput.

    python benchmarks/train.py                       # paper presets, 128x128, batch 64
    python benchmarks/train.py --quick               # CPU-sized: small presets, 64x64, batch 8
    python benchmarks/train.py --model unet --batch 128 --steps 50

For each model the jitted, sharded ``train_step`` of ``symgrad.train`` (the one used by
``symgrad train``: AdamW, SMSE, batch over all devices) runs on synthetic states already on
the device, so the figure is compute throughput, without data loading. FLOPs per step come
from XLA's cost analysis of the lowered step (the compiled module's count is recorded too,
but on GPU it misses the cuDNN convolutions); the machine's attainable throughput from a
large float32 matmul timed in the same process (same default precision as training).
The record is merged into ``benchmarks/records/train.json`` under the device's name, so
CPU and GPU results sit side by side. Runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.names import MODELS

STUDY_TRANSITIONS = 3 * 5000 * 15  # CE-RP, CE-RPUI, CE-CRP: 5,000 trajectories x 15 transitions
STUDY_EPOCHS = 90


def _block(tree):
    return jax.block_until_ready(tree)


def matmul_throughput(n: int, reps: int, dtype=jnp.float32) -> float:
    """FLOP/s of an n x n x n matmul (median of ``reps``), default precision."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    _block(f(a, b))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        _block(f(a, b))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return None
    return float(cost.get("flops", float("nan")))


def bench_model(name: str, preset: str, resolution: int, batch: int, steps: int, warmup: int) -> dict:
    from symgrad.models import build, parameter_count, surrogate_apply
    from symgrad.train.config import TrainConfig
    from symgrad.train.state import TrainState
    from symgrad.train.step import (
        batch_sharding, make_mesh, make_optimizer, make_train_step, replicated_sharding,
    )

    n_dev = jax.device_count()
    if batch % n_dev:
        raise SystemExit(f"--batch {batch} must be a multiple of the {n_dev} devices")
    model = build(name, preset, resolution)
    config = TrainConfig(model=name, preset=preset, batch_size=batch)
    optimizer = make_optimizer(config, steps_per_epoch=1000)
    mesh = make_mesh()
    repl, data = replicated_sharding(mesh), batch_sharding(mesh)
    rng = np.random.default_rng(0)
    # Plausible physical magnitudes: rho, p ~ 1, momentum ~ 0.3.
    x = rng.normal(size=(batch, resolution, resolution, 4)).astype(np.float32) * [0.2, 0.3, 0.3, 0.5]
    x += np.array([1.0, 0.0, 0.0, 2.5], np.float32)
    y = x + 0.01 * rng.normal(size=x.shape).astype(np.float32)
    sigma = np.sqrt(np.mean(y.astype(np.float64) ** 2, axis=(0, 1, 2)))
    sigma[1] = sigma[2] = np.sqrt(0.5 * (sigma[1] ** 2 + sigma[2] ** 2))
    xg, yg = jax.device_put(x, data), jax.device_put(y, data)

    t0 = time.perf_counter()
    params = jax.jit(model.init, out_shardings=repl)(jax.random.key(0))
    opt_state = jax.jit(optimizer.init, out_shardings=repl)(params)
    state = TrainState(params, opt_state, jax.device_put(np.int32(0), repl),
                       jax.device_put(np.zeros(2, np.uint32), repl))
    _block(state.params)
    init_s = time.perf_counter() - t0

    step_fn = make_train_step(surrogate_apply(model.apply, sigma), optimizer, sigma, mesh)
    t0 = time.perf_counter()
    lowered = step_fn.jitted.lower(state.params, state.opt_state, state.step, state.rng, xg, yg)
    # FLOPs of the step as written (before backend optimisation). The compiled module's
    # count misses convolutions on GPU (they become cuDNN custom calls, counted as 0).
    flops = _flops(lowered)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops_compiled = _flops(compiled)

    for _ in range(warmup):
        state, metrics = step_fn(state, xg, yg)
    _block((state.params, metrics))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step_fn(state, xg, yg)
        _block(metrics["loss"])
        times.append(time.perf_counter() - t)
    # Also a pipelined measurement (no per-step sync), as a long run dispatches ahead.
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, xg, yg)
    _block((state.params, metrics))
    pipelined = (time.perf_counter() - t) / steps
    step_s = float(np.median(times))
    rec = {
        "model": name, "preset": preset, "resolution": resolution, "batch": batch,
        "parameters": parameter_count(params), "devices": n_dev,
        "init_seconds": init_s, "compile_seconds": compile_s,
        "step_seconds_median": step_s, "step_seconds_pipelined": pipelined,
        "samples_per_second": batch / step_s,
        "samples_per_second_pipelined": batch / pipelined,
        "flops_per_step": flops,
        "flops_per_step_compiled": flops_compiled,
        "achieved_flops_per_second": flops / step_s if flops else None,
        "final_loss": float(metrics["loss"]),
        "study_hours_90_epochs": STUDY_EPOCHS * STUDY_TRANSITIONS / (batch / pipelined) / 3600,
    }
    stats = getattr(jax.local_devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        rec["peak_device_memory_gib"] = stats["peak_bytes_in_use"] / 2**30
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--preset", default=None, choices=["tiny", "small", "paper"])
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps")
    p.add_argument("--quick", action="store_true", help="CPU-sized run (small presets, 64x64, batch 8, 3 steps)")
    p.add_argument("--matmul-size", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "records" / "train.json"))
    a = p.parse_args(argv)
    preset = a.preset or ("small" if a.quick else "paper")
    resolution = a.resolution or (64 if a.quick else 128)
    batch = a.batch or (8 if a.quick else 64)
    steps = a.steps or (3 if a.quick else 20)
    warmup = 1 if a.quick else 3
    gpu = jax.default_backend() != "cpu"
    n = a.matmul_size or (8192 if gpu else (1024 if a.quick else 2048))

    dev = jax.devices()[0]
    device_name = f"{jax.default_backend()}:{dev.device_kind}"
    print(f"device {device_name} x{jax.device_count()}", flush=True)
    mm = matmul_throughput(n, reps=10 if gpu else 3)
    mm_bf16 = matmul_throughput(n, reps=10, dtype=jnp.bfloat16) if gpu else None
    print(f"float32 matmul {n}^3: {mm / 1e12:.3f} TFLOP/s", flush=True)
    results = []
    for name in a.model:
        rec = bench_model(name, preset, resolution, batch, steps, warmup)
        rec["fraction_of_matmul_peak"] = (
            rec["flops_per_step"] / rec["step_seconds_pipelined"] / mm if rec["flops_per_step"] else None)
        results.append(rec)
        print(f"{name:5s} {preset} {resolution}^2 batch {batch}: {rec['samples_per_second_pipelined']:.1f} "
              f"samples/s, {rec['flops_per_step'] / 1e9 if rec['flops_per_step'] else float('nan'):.2f} "
              f"GFLOP/step, {100 * (rec['fraction_of_matmul_peak'] or float('nan')):.1f}% of matmul, "
              f"90 epochs of the study: {rec['study_hours_90_epochs']:.1f} h "
              f"(compile {rec['compile_seconds']:.1f} s)", flush=True)

    from symgrad.io import git_commit, package_versions

    record = {
        "benchmark": "train", "quick": a.quick,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name, "device_count": jax.device_count(), "backend": jax.default_backend(),
        "git_commit": git_commit(), "versions": package_versions(),
        "matmul_size": n, "matmul_float32_flops_per_second": mm,
        "matmul_bfloat16_flops_per_second": mm_bf16,
        "note": "synthetic device-resident batches (compute only, no data loading); "
                "fraction_of_matmul_peak = XLA cost-analysis FLOPs per step (lowered module) / pipelined step time "
                "/ measured float32 matmul FLOP/s; study_hours_90_epochs extrapolates "
                f"{STUDY_EPOCHS} epochs x {STUDY_TRANSITIONS} transitions from the pipelined rate",
        "results": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged[device_name + (" (quick)" if a.quick else "")] = record
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
