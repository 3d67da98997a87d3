"""``make demo``: the whole study, end to end, small enough for a laptop (2 CPU cores).

generate CE-RP data (16x16) -> train a tiny UNet, ViT and G-CNN -> for each: forward
equivariance and gradient overlaps (chi and Euclidean, at the run's damping 1e-6, every
value certified to 1e-6) under D4 and x/y translations -> the study's figures and the
report, in ``demo_out/report/``.

The demo's settings differ from the study's in size only: 16x16 instead of 128x128, tiny
presets, 64 trajectories, and a curvature batch of one state (the Gauss-Newton matrix of
``--curvature-samples 1``) so that the chi solves fit the time; the study uses the whole
mini-batch. With 1,024 outputs against 11k to 30k parameters, G sees little of parameter
space: the report shows null-space shares near 0.99, so the demo's chi cosines are close to
the cosines of the gradients' parts that G does not see. Overlap translations step by 2 cells (shifts 0, 2, ..., 14), so that shifts
that are multiples of the tiny models' down-sampling factor (4: the UNet's two poolings,
the ViT's patches, the G-CNN's poolings) alternate with shifts that are not.

Every step is a ``symgrad`` subcommand run in this process (one JAX start-up, and a
persistent compilation cache in ``OUT/.jax-cache``), so the demo is also a smoke test of
the CLI. Steps whose output exists are skipped: run it again after an interruption and
it picks up where it stopped; a second run reuses everything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

MODELS = ("unet", "vit", "gcnn")
GROUPS = ("d4", "translate-x", "translate-y")
RESOLUTION = 16
TRAJECTORIES = 64
# The ViT learns least per epoch and trains fastest: it gets more epochs, so that every
# model clearly beats the persistence baseline (checked by tests/test_demo.py).
EPOCHS = {"unet": 20, "vit": 80, "gcnn": 20}
LEARNING_RATE = 2e-3
EQUIVARIANCE_SAMPLES = 6  # all the test trajectories (10% of 64)
OVERLAP_SAMPLES = 4
OVERLAP_STRIDE = 2


def steps(out: Path) -> list[tuple[str, Path | None, list[str]]]:
    """``(title, output that marks the step done, symgrad arguments)`` of every step."""
    data = out / "data" / "ce-rp.nc"
    runs = out / "runs"
    res = out / "results"
    plan: list[tuple[str, Path | None, list[str]]] = [
        (f"generate {TRAJECTORIES} CE-RP trajectories at {RESOLUTION}x{RESOLUTION}", data,
         ["generate", "--family", "CE-RP", "--trajectories", str(TRAJECTORIES), "--resolution", str(RESOLUTION),
          "--times", "6", "--t-final", "0.25", "--seed", "0", "--out", str(data)]),
        ("describe the data file", None, ["info", str(data)]),
    ]
    for model in MODELS:
        plan.append((f"train a tiny {model} ({EPOCHS[model]} epochs)", runs / model / "DEMO_DONE",
                     ["train", "--model", model, "--preset", "tiny", "--data", str(data), "--out", str(runs / model),
                      "--seed", "0", "--epochs", str(EPOCHS[model]), "--batch-size", "16", "--lr", str(LEARNING_RATE)]))
    results = []
    for model in MODELS:
        for group in GROUPS:
            path = res / f"{model}-equivariance-{group}.nc"
            results.append(path)
            plan.append((f"{group} equivariance of the {model}", path,
                         ["equivariance", "--run", str(runs / model), "--group", group, "--data", str(data),
                          "--samples", str(EQUIVARIANCE_SAMPLES), "--out", str(path)]))
    for model in MODELS:
        for group in GROUPS:
            path = res / f"{model}-overlap-{group}.nc"
            results.append(path)
            stride = [] if group == "d4" else ["--stride", str(OVERLAP_STRIDE)]
            plan.append((f"{group} gradient overlaps of the {model} (chi at lambda = weight decay, and Euclidean)",
                         path,
                         ["overlap", "--run", str(runs / model), "--group", group, *stride, "--metric", "both",
                          "--data", str(data), "--samples", str(OVERLAP_SAMPLES), "--curvature-samples", "1",
                          "--rtol", "1e-6", "--out", str(path)]))
    plan.append(("the study's figures and the report", out / "report" / "DEMO_DONE",
                 ["report", *map(str, results), "--runs", *(str(runs / m) for m in MODELS),
                  "--out", str(out / "report")]))
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m symgrad.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--fresh", action="store_true", help="recompute every step")
    args = parser.parse_args(argv)
    out = Path(args.out)
    # Before JAX starts: the chi solves of one model share most programs across groups,
    # and a second demo compiles nothing.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str((out / ".jax-cache").absolute()))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    from symgrad import cli

    start = time.perf_counter()
    plan = steps(out)
    for k, (title, marker, command) in enumerate(plan, 1):
        elapsed = time.perf_counter() - start
        print(f"\n=== [{k}/{len(plan)}] {title}  ({elapsed:.0f} s so far)\n$ symgrad {' '.join(command)}", flush=True)
        if marker is not None and marker.exists() and not args.fresh:
            print(f"(done already: {marker})")
            continue
        if args.fresh and marker is not None and marker.suffix == ".nc" and marker.exists():
            marker.unlink()
        t0 = time.perf_counter()
        rc = cli.main(command + (["--overwrite"] if args.fresh and command[0] == "train" else []))
        if rc != 0:
            print(f"demo: step {k} failed with exit status {rc}", file=sys.stderr)
            return rc
        if marker is not None and marker.name == "DEMO_DONE":
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        print(f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; results in {out}/results, "
          f"figures and report in {out}/report (open {out}/report/report.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
