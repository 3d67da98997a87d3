"""The demo's own steps: its surrogates beat the persistence baseline on the test transitions.

The default suite runs the demo's data, its ViT (the weakest of its three models) and that
model's D4 equivariance, exactly as `make demo` does; the slow test runs the whole demo and
checks every model, every certified value and the report.
"""

import numpy as np
import pytest
import xarray as xr

from symgrad import cli, demo


def _run(steps, wanted):
    for title, marker, command in steps:
        if any(title.startswith(w) for w in wanted):
            assert cli.main(command) == 0, title


def _beats_persistence(path, factor=0.9):
    with xr.open_dataset(path) as ds:
        test, persistence = float(ds["test_error"].mean()), float(ds["persistence_error"].mean())
    assert test < factor * persistence, (path.name, test, persistence)
    return test / persistence


def test_the_demo_vit_beats_persistence(tmp_path):
    steps = demo.steps(tmp_path)
    _run(steps, ("generate", "train a tiny vit", "d4 equivariance of the vit"))
    _beats_persistence(tmp_path / "results" / "vit-equivariance-d4.nc")


@pytest.mark.slow
def test_the_whole_demo(tmp_path):
    assert demo.main(["--out", str(tmp_path)]) == 0
    for model in demo.MODELS:
        _beats_persistence(tmp_path / "results" / f"{model}-equivariance-d4.nc")
        for group in demo.GROUPS:
            with xr.open_dataset(tmp_path / "results" / f"{model}-overlap-{group}.nc") as ds:
                assert ds.attrs["n_flagged"] == 0 and float(ds.attrs["damping"]) == 1e-6
                assert np.all(np.isfinite(ds["overlap_cosine_chi"].values))
    report = tmp_path / "report"
    assert (report / "report.html").is_file() and (report / "figures" / "fig1_d4.png").is_file()
    assert (report / "figures" / "fig2_translations.png").is_file()
    assert demo.main(["--out", str(tmp_path)]) == 0  # a second run reuses everything
