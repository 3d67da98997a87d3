"""Throughput of the Euler solver: cell updates per second, JIT compilation excluded.

    python benchmarks/solver.py [--resolution 128] [--batch 8] [--steps 50] [--pyclaw]

One *cell update* is one cell advanced by one full time step (all Runge-Kutta stages), so
``cell_updates = batch * nx * ny * steps``. Each step recomputes its CFL time step, as in
``solve``. The problem is a batch of CE-RP initial states (default solver settings). The
record (device, JAX version, settings, timings) goes to ``benchmarks/records/solver.json``.
Runs unchanged on CPU and GPU.

With ``--pyclaw`` (and Clawpack installed: Debian's ``gfortran``, then ``pip install
clawpack``; never a dependency of symgrad) the same problem is run with PyClaw's classic
2-D Clawpack solver (``euler_4wave_2D`` Roe solver, MC limiter, dimensional splitting off,
transverse corrections) for the same number of steps, one trajectory at a time, and the
ratio is recorded. PyClaw differs in method (wave propagation, one-step Lax-Wendroff type
vs our two-stage MUSCL-HLLC), so the ratio compares the cost of comparable second-order
schemes, not identical arithmetic.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.euler import EulerConfig, conservative_to_primitive, max_stable_dt, sample_initial, step

RECORD = Path(__file__).resolve().parent / "records" / "solver.json"


def _advance(q, n_steps, config):
    def body(_, q):
        return step(q, max_stable_dt(q, config), config)

    return jax.lax.fori_loop(0, n_steps, body, q)


def benchmark_symgrad(resolution, batch, n_steps, repeats, config):
    q0 = sample_initial("CE-RP", jax.random.key(0), batch, resolution, gamma=config.gamma)
    run = jax.jit(_advance, static_argnums=(1, 2))
    t0 = time.perf_counter()
    run(q0, n_steps, config).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run(q0, n_steps, config).block_until_ready()
        times.append(time.perf_counter() - t0)
    assert bool(jnp.isfinite(out).all()), "benchmark produced non-finite states"
    cells = batch * resolution * resolution * n_steps
    best, median = min(times), statistics.median(times)
    return q0, {
        "cell_updates": cells,
        "seconds_best": best,
        "seconds_median": median,
        "cell_updates_per_second": cells / best,
        "cell_updates_per_second_median": cells / median,
        "first_call_seconds_including_compile": compile_s,
    }


def benchmark_pyclaw(q0, n_steps, gamma, cfl):
    """PyClaw classic solver on the same initial states and number of steps (or None)."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        # PyClaw's logging config writes pyclaw.log into the working directory on import.
        os.chdir(scratch)
        try:
            from clawpack import pyclaw, riemann
        except ImportError:
            return None
        finally:
            os.chdir(cwd)
    # ... and keep later log records out of the terminal and of any file.
    logging.getLogger("pyclaw").setLevel(logging.WARNING)
    logging.getLogger("CLAW").setLevel(logging.WARNING)
    q0 = np.asarray(q0, dtype=np.float64)
    batch, nx, ny, _ = q0.shape
    total = 0.0
    for b in range(batch):
        solver = pyclaw.ClawSolver2D(riemann.euler_4wave_2D)
        solver.all_bcs = pyclaw.BC.periodic
        solver.limiters = pyclaw.limiters.tvd.MC
        solver.dimensional_split = False
        solver.transverse_waves = 2
        solver.cfl_max = 1.0
        solver.cfl_desired = cfl
        solver.dt_variable = True
        domain = pyclaw.Domain([pyclaw.Dimension(0.0, 1.0, nx, name="x"), pyclaw.Dimension(0.0, 1.0, ny, name="y")])
        state = pyclaw.State(domain, 4)
        state.problem_data["gamma"] = gamma
        state.problem_data["gamma1"] = gamma - 1.0
        state.q[...] = np.moveaxis(q0[b], -1, 0)
        sol = pyclaw.Solution(state, domain)
        solver.setup(sol)
        rho, u, v, p = (np.asarray(a) for a in conservative_to_primitive(jnp.asarray(q0[b]), gamma))
        smax = float((np.abs(u) + np.sqrt(gamma * p / rho)).max() + (np.abs(v) + np.sqrt(gamma * p / rho)).max())
        solver.dt = cfl / (smax * nx)
        t0 = time.perf_counter()
        for _ in range(n_steps):
            solver.step(sol, take_one_step=True, tstart=0.0, tend=1e9)
        total += time.perf_counter() - t0
    cells = batch * nx * ny * n_steps
    return {
        "solver": "pyclaw ClawSolver2D, euler_4wave_2D (Roe), MC limiter, unsplit with transverse corrections",
        "clawpack_version": pyclaw.__version__ if hasattr(pyclaw, "__version__") else "unknown",
        "cell_updates": cells,
        "seconds": total,
        "cell_updates_per_second": cells / total,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rk-stages", type=int, default=2, choices=(2, 3))
    parser.add_argument("--reconstruction", default="primitive", choices=("primitive", "characteristic"))
    parser.add_argument("--pyclaw", action="store_true", help="also time Clawpack's PyClaw if installed")
    parser.add_argument("--out", type=Path, default=RECORD)
    args = parser.parse_args(argv)

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    config = EulerConfig(rk_stages=args.rk_stages, reconstruction=args.reconstruction)
    q0, ours = benchmark_symgrad(args.resolution, args.batch, args.steps, args.repeats, config)
    device = jax.devices()[0]
    record = {
        "benchmark": "symgrad.euler solver throughput",
        "definition": "cell_updates = batch * nx * ny * time_steps (each step: all RK stages + CFL dt); JIT excluded",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": f"{device.platform}:{device.device_kind}",
        "n_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": load_at_start,
        "jax_version": jax.__version__,
        "dtype": str(q0.dtype),
        "problem": {"family": "CE-RP", "resolution": args.resolution, "batch": args.batch, "steps": args.steps},
        "solver_config": config.to_dict(),
        "symgrad": ours,
    }
    print(
        f"symgrad: {ours['cell_updates_per_second']:.3e} cell updates/s "
        f"({args.batch} x {args.resolution}^2 x {args.steps} steps in {ours['seconds_best']:.3f} s, "
        f"{record['device']}, compile+first run {ours['first_call_seconds_including_compile']:.1f} s)"
    )
    if args.pyclaw:
        claw = benchmark_pyclaw(q0, args.steps, config.gamma, config.cfl)
        if claw is None:
            print("pyclaw: not installed (apt-get install gfortran && pip install clawpack); skipped")
            record["pyclaw"] = None
        else:
            record["pyclaw"] = claw
            record["speedup_over_pyclaw"] = ours["cell_updates_per_second"] / claw["cell_updates_per_second"]
            print(f"pyclaw:  {claw['cell_updates_per_second']:.3e} cell updates/s; symgrad/pyclaw = {record['speedup_over_pyclaw']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"record written to {args.out}")


if __name__ == "__main__":
    main()
