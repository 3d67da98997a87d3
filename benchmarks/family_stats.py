"""Our generated CE-RP, CE-CRP and CE-RPUI against the statistics of the published PDEGym data.

    python benchmarks/family_stats.py [--trajectories 8] [--resolution 128]

Poseidon's scOT code normalises PDEGym's compressible-Euler data with a per-family mean
pressure subtracted from p, and shared channel means and standard deviations of
(rho, u, v, p - mean_p) (POSEIDON below). This script generates trajectories of each family
with symgrad's solver at PDEGym's grid and times (21 times on [0, 1]), computes the same
statistics over all cells and times, prints them beside Poseidon's, and writes
``benchmarks/records/family_stats.json``. It measures statistics, not speed; what it
excludes: trajectories the solver rejects (counted in the record).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from symgrad import euler
from symgrad.io import provenance

# Poseidon (Herde et al., 2024), scOT's normalisation of PDEGym's CE data sets.
POSEIDON = {
    "mean_pressure": {"CE-RP": 0.215, "CE-CRP": 0.553, "CE-RPUI": 1.33},
    "channel_mean": [0.80, 0.0, 0.0, 0.0],  # rho, u, v, p - mean_p
    "channel_std": [0.31, 0.391, 0.356, 0.185],
}
FAMILIES = ("CE-RP", "CE-CRP", "CE-RPUI")
CHANNELS = ("rho", "u", "v", "p - mean_p")


def family_primitives(family: str, n: int, resolution: int, n_times: int, seed: int):
    """``(rho, u, v, p)`` of ``n`` trajectories at ``n_times`` equispaced times on [0, 1],
    float64 arrays ``(trajectories, time, x, y)``, and the number rejected by the solver."""
    q0 = euler.sample_initial(family, jax.random.key(seed), n, resolution)
    result = euler.solve(q0, jnp.linspace(0.0, 1.0, n_times))
    ok = np.asarray(result.ok)
    rho, u, v, p = euler.conservative_to_primitive(result.states[ok])
    return [np.asarray(a, np.float64) for a in (rho, u, v, p)], int((~ok).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=8, help="trajectories per family")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--times", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "records" / "family_stats.json"))
    args = parser.parse_args(argv)

    per_family, pooled = {}, [[] for _ in CHANNELS]
    for family in FAMILIES:
        t0 = time.perf_counter()
        (rho, u, v, p), rejected = family_primitives(family, args.trajectories, args.resolution, args.times, args.seed)
        mean_p = float(p.mean())
        for values, store in zip((rho, u, v, p - mean_p), pooled):
            store.append(values.ravel())
        per_family[family] = {
            "mean_pressure": mean_p, "mean_density": float(rho.mean()),
            "std_pressure": float(p.std()), "trajectories": int(rho.shape[0]), "rejected": rejected,
            "seconds": time.perf_counter() - t0,
        }
        print(f"{family}: mean p {mean_p:.3f} (Poseidon {POSEIDON['mean_pressure'][family]}), "
              f"mean rho {rho.mean():.3f}, {rho.shape[0]} trajectories in {per_family[family]['seconds']:.0f} s")
    values = [np.concatenate(v) for v in pooled]
    shared = {"channel_mean": [float(v.mean()) for v in values], "channel_std": [float(v.std()) for v in values]}
    print(f"{'channel':12} {'mean (ours)':>12} {'Poseidon':>9} {'std (ours)':>11} {'Poseidon':>9}")
    for c, name in enumerate(CHANNELS):
        print(f"{name:12} {shared['channel_mean'][c]:12.3f} {POSEIDON['channel_mean'][c]:9.3f} "
              f"{shared['channel_std'][c]:11.3f} {POSEIDON['channel_std'][c]:9.3f}")
    record = {
        "benchmark": "family_stats", **provenance(), "settings": vars(args), "poseidon": POSEIDON,
        "ours": {"per_family": per_family, **shared}, "channels": list(CHANNELS),
        "note": "statistics over all cells and all times of the generated trajectories; Poseidon's are over "
                "the published PDEGym files",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
