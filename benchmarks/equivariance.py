"""Seconds for the D4 equivariance diagnostic (``symgrad.diagnostics.equivariance``).

Default: the ``paper`` UNet (random init) on 64 samples at 128x128, all 8 D4 elements,
i.e. 8 x 64 + 64 = 576 model evaluations. The first call includes compilation; later
calls reuse the cached programs and are reported as the time without JIT (median of
``--repeats``). Runs unchanged on CPU and GPU; writes ``benchmarks/records/equivariance.json``.

    python benchmarks/equivariance.py [--model unet] [--preset paper] [--samples 64]
        [--resolution 128] [--group d4] [--chunk-size 64] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics import EquivarianceConfig
from symgrad.diagnostics.equivariance import equivariance_errors
from symgrad.groups import named_group
from symgrad.io import git_commit, package_versions
from symgrad.loss import channel_scales
from symgrad.models import build, parameter_count, surrogate_apply

DEFAULT_OUT = Path(__file__).resolve().parent / "records" / "equivariance.json"


def random_states(key, n, res):
    """Physical states with O(1) structure (density, momentum, energy)."""
    k1, k2, k3 = jax.random.split(key, 3)
    rho = jax.random.uniform(k1, (n, res, res, 1), jnp.float32, 0.5, 1.5)
    m = jax.random.uniform(k2, (n, res, res, 2), jnp.float32, -0.5, 0.5)
    e = jax.random.uniform(k3, (n, res, res, 1), jnp.float32, 2.0, 3.0)
    return jnp.concatenate([rho, m, e], axis=-1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--group", default="d4")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--eval-chunk", type=int, default=64, help="model evaluations per compiled call")
    parser.add_argument("--repeats", type=int, default=3)
    # The record was measured in float32; the diagnostic's own default is float64.
    parser.add_argument("--precision", default="float32", choices=("float32", "float64"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    model = build(args.model, args.preset, args.resolution)
    params = model.init(jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    x = random_states(kx, args.samples, args.resolution)
    y = random_states(ky, args.samples, args.resolution)
    sigma = channel_scales(np.asarray(y))
    f = surrogate_apply(model.apply, sigma)
    group = named_group(args.group, args.resolution, stride=args.stride)

    def once():
        t0 = time.perf_counter()
        ds = equivariance_errors(f, params, x, y, sigma, group,
                                 EquivarianceConfig(eval_chunk=args.eval_chunk, precision=args.precision))
        float(ds["equivariance_error"].sum())  # results are host numpy: the work is done
        return time.perf_counter() - t0, ds

    first, ds = once()
    repeats = [once()[0] for _ in range(max(1, args.repeats))]
    steady = statistics.median(repeats)
    n_evals = (len(group) + 1) * args.samples
    device = jax.devices()[0]
    record = {
        "benchmark": "equivariance",
        "model": args.model,
        "preset": args.preset,
        "parameters": parameter_count(params),
        "group": group.name,
        "elements": len(group),
        "samples": args.samples,
        "resolution": args.resolution,
        "chunk_size": args.eval_chunk,
        "model_evaluations": n_evals,
        "seconds_including_jit": first,
        "seconds_excluding_jit": steady,
        "seconds_excluding_jit_all": repeats,
        "jit_seconds_estimate": max(0.0, first - steady),
        "evaluations_per_second": n_evals / steady,
        "median_equivariance_error": float(np.median(ds["equivariance_error"].values[1:])) if len(group) > 1 else 0.0,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu_count": __import__("os").cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "package_versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"{args.model}/{args.preset} {group.name}: {args.samples} samples at {args.resolution}x{args.resolution} "
          f"({n_evals} model evaluations) on {record['backend']} ({record['device']}): "
          f"{first:.2f} s including JIT, {steady:.2f} s excluding JIT -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
