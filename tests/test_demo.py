"""The demo (``make demo``): the sweep ``experiments/sweeps/demo.toml``.

The default suite runs the demo's own jobs for its data, its ViT (the weakest of its four
models) and that model's D4 equivariance, exactly as ``make demo`` does, and checks that
the ViT beats the persistence baseline on the test transitions; the slow test runs the
whole demo as ``make demo`` does, checks every model, every certified value and the report,
and that a second run skips every job.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from symgrad.sweep import expand, load_sweep, run_local

DEMO = Path(__file__).resolve().parent.parent / "experiments" / "sweeps" / "demo.toml"


def _beats_persistence(path, factor=0.9):
    with xr.open_dataset(path) as ds:
        test, persistence = float(ds["test_error"].mean()), float(ds["persistence_error"].mean())
    assert test < factor * persistence, (path.name, test, persistence)
    return test / persistence


def test_the_demo_is_the_study_in_miniature(tmp_path):
    sweep = load_sweep(DEMO, out=tmp_path)
    assert sweep.models == ("unet", "vit", "gcnn", "relaxed")
    assert sweep.groups == ("d4", "translate-x", "translate-y", "boost-x", "boost-y")
    jobs = {job.name: job for job in expand(sweep)}
    assert list(jobs)[0] == "generate" and jobs["generate"].output == str(tmp_path / "data" / "ce-rp.nc")
    assert all(job.depends_on == ("generate",) for job in jobs.values() if job.kind == "train")

    def flag(job, name):
        return job.argv[job.argv.index(name) + 1]

    assert [flag(jobs[f"train-{m}-tiny-seed0"], "--epochs") for m in sweep.models] == ["10", "40", "10", "10"]
    for group in sweep.groups:
        overlap = jobs[f"overlap-{group}-unet-tiny-seed0"]
        assert flag(overlap, "--metric") == "both" and flag(overlap, "--curvature-samples") == "1"
        assert ("--stride" in overlap.argv) == group.startswith("translate")
        assert ("--shifts" in overlap.argv) == group.startswith("boost")
    # the smallest boost exact on the grid, dx / dt, lies inside the data's velocities (|u| <= 0.65 initially)
    generate = jobs["generate"]
    dt = float(flag(generate, "--t-final")) / (int(flag(generate, "--times")) - 1)
    assert 1.0 / (int(flag(generate, "--resolution")) * dt) < 0.65
    assert list(jobs)[-1] == "report"


def test_the_demo_vit_beats_persistence(tmp_path):
    jobs = {job.name: job for job in expand(load_sweep(DEMO, out=tmp_path))}
    wanted = [jobs[name] for name in ("generate", "train-vit-tiny-seed0", "equivariance-d4-vit-tiny-seed0")]
    assert run_local(wanted, in_process=True) == 0
    _beats_persistence(Path(wanted[-1].output))


@pytest.mark.slow
def test_the_whole_demo(tmp_path):
    def demo():
        return subprocess.run([sys.executable, "-m", "symgrad", "sweep", str(DEMO), "--out", str(tmp_path),
                               "--in-process"], capture_output=True, text=True)

    first = demo()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    sweep = load_sweep(DEMO, out=tmp_path)
    results = tmp_path / "results"
    for model in sweep.models:
        _beats_persistence(results / f"{model}-tiny-seed0-equivariance-d4.nc")
        for group in sweep.groups:
            with xr.open_dataset(results / f"{model}-tiny-seed0-overlap-{group}.nc") as ds:
                assert ds.attrs["n_flagged"] == 0 and float(ds.attrs["damping"]) == 1e-6
                assert np.all(np.isfinite(ds["overlap_cosine_chi"].values))
    report = tmp_path / "report"
    assert (report / "report.html").is_file() and (report / "figures" / "fig1_d4.png").is_file()
    assert (report / "figures" / "fig2_translations.png").is_file()
    assert (report / "figures" / "fig4_boosts.png").is_file()
    for model in sweep.models:  # every boost result carries the data's own defect, the floor
        with xr.open_dataset(results / f"{model}-tiny-seed0-equivariance-boost-x.nc") as ds:
            assert np.all(np.isfinite(ds["data_defect"].values)) and float(ds["data_defect"].max()) > 0
    assert (tmp_path / ".jax-cache").is_dir()
    second = demo()  # a second run reuses everything
    jobs = expand(sweep)
    assert second.returncode == 0 and second.stdout.count("done already") == len(jobs), second.stdout
