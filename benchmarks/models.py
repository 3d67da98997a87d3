"""Forward and forward+backward time per sample of each `paper` model, with XLA's FLOP count.

    python benchmarks/models.py                 # batch 64 at 128x128 (the issue's setting)
    python benchmarks/models.py --batch 4       # CPU-friendly
    python benchmarks/models.py --quick         # batch 2, 2 repeats: a smoke run

The record is merged into ``benchmarks/records/models.json`` under a key naming the
device and batch, so CPU and GPU runs sit side by side. Runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp

from symgrad.models import MODELS, build, parameter_count

RECORD = Path(__file__).resolve().parent / "records" / "models.json"


def _flops(stage) -> float | None:
    try:
        cost = stage.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends/stages cannot analyse; the record says None
        return None
    if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
        cost = cost[0] if cost else None
    if not cost:
        return None
    value = cost.get("flops")
    return float(value) if value is not None else None


def _time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up (already compiled: no compile in the timing)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def bench_model(name: str, preset: str, resolution: int, batch: int, repeats: int) -> dict:
    model = build(name, preset, resolution)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (batch, resolution, resolution, 4), jnp.float32)

    def loss(params, x):
        # SMSE-like scalar: the backward pass has the shape of a training step's
        return jnp.mean(jnp.square(model.apply(params, x) - x))

    forward = jax.jit(model.apply)
    forward_backward = jax.jit(jax.value_and_grad(loss))
    row = {"model": name, "preset": preset, "parameters": parameter_count(params)}
    for label, fn in (("forward", forward), ("forward_backward", forward_backward)):
        t0 = time.perf_counter()
        lowered = fn.lower(params, x)
        compiled = lowered.compile()
        row[f"{label}_compile_s"] = time.perf_counter() - t0
        # the compiled count is the figure; on GPU it omits convolutions and GEMMs that
        # run as cuDNN/cuBLAS custom calls, so also record the backend-independent count of
        # the lowered (pre-optimisation) program
        flops = _flops(compiled)
        lowered_flops = _flops(lowered)
        row[f"{label}_lowered_gflop_per_step"] = None if lowered_flops is None else lowered_flops / 1e9
        seconds = _time(compiled, (params, x), repeats)
        row[f"{label}_s_per_step"] = seconds
        row[f"{label}_ms_per_sample"] = 1e3 * seconds / batch
        row[f"{label}_gflop_per_step"] = None if flops is None else flops / 1e9
        row[f"{label}_tflop_per_s"] = None if flops is None else flops / seconds / 1e12
        row[f"{label}_lowered_tflop_per_s"] = None if lowered_flops is None else lowered_flops / seconds / 1e12
    return row


def _merge_record(path: Path, key: str, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.exists() else {}
    record[key] = entry
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)  # atomic: a crashed run never leaves half a record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 repeats (overrides --batch/--repeats)")
    parser.add_argument("--output", type=Path, default=RECORD)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 2, 2

    device = jax.devices()[0]
    rows = []
    for name in args.models:
        row = bench_model(name, args.preset, args.resolution, args.batch, args.repeats)
        rows.append(row)
        print(
            f"{name:5s} {row['parameters']:>11,d} params | fwd {row['forward_ms_per_sample']:9.3f} ms/sample "
            f"({row['forward_gflop_per_step'] or float('nan'):9.1f} GFLOP/step) | fwd+bwd "
            f"{row['forward_backward_ms_per_sample']:9.3f} ms/sample "
            f"({row['forward_backward_gflop_per_step'] or float('nan'):9.1f} GFLOP/step, "
            f"{row['forward_backward_tflop_per_s'] or float('nan'):.3f} TFLOP/s; lowered program "
            f"{row['forward_backward_lowered_gflop_per_step'] or float('nan'):.1f} GFLOP/step, "
            f"{row['forward_backward_lowered_tflop_per_s'] or float('nan'):.3f} TFLOP/s)",
            flush=True,
        )
    entry = {
        "device": str(device.device_kind),
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "python": sys.version.split()[0],
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "batch": args.batch,
        "resolution": args.resolution,
        "preset": args.preset,
        "repeats": args.repeats,
        "dtype": "float32",
        "timing": "best of repeats, after a warm-up call, compile excluded",
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": rows,
    }
    key = f"{device.platform}:{device.device_kind}:batch{args.batch}:res{args.resolution}:{args.preset}"
    _merge_record(args.output, key, entry)
    print(f"wrote {args.output} [{key}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
