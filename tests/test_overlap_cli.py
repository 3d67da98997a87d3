"""`symgrad overlap` end to end on a tiny trained run, resume through the CLI, user errors."""

import numpy as np
import pytest
import xarray as xr

from symgrad.cli import main



def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("symgrad overlap: error:") and "\n" not in err, err
    for n in needles:
        assert n in err


def test_unknown_group_and_missing_run(tmp_path, capsys):
    assert main(["overlap", "--run", str(tmp_path), "--group", "so2", "--out", str(tmp_path / "o.nc")]) == 2
    _one_line_error(capsys, "so2")
    assert main(["overlap", "--run", str(tmp_path / "nope"), "--group", "d4", "--out", str(tmp_path / "o.nc")]) == 2
    _one_line_error(capsys, "does not exist")


@pytest.fixture(scope="module")
def tiny_run(tiny_trained_run):
    return tiny_trained_run


def test_end_to_end_d4_at_the_runs_damping(tiny_run, tmp_path, capsys):
    run_dir, data_file = tiny_run
    from symgrad.train import load_run

    run = load_run(run_dir)
    out = tmp_path / "ov.nc"
    args = ["overlap", "--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "2",
            "--rtol", "1e-6", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert not (tmp_path / "ov.nc.partial").exists()  # partials removed after the atomic write
    with xr.open_dataset(out) as ds:
        assert list(ds.element.values) == ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
        assert list(ds.sample.values) == list(run.info.split["test"][:2])
        assert ds.overlap_matrix_chi.dims == ("element", "sample_i", "sample_j")
        np.testing.assert_allclose(ds.overlap_cosine_chi.sel(element="e").values, 1.0, rtol=1e-12)
        assert int(ds.attrs["checkpoint_step"]) == run.step and ds.attrs["damping"] == run.info.weight_decay == 1e-6
        assert ds.attrs["ggn_products"] > 0 and "config" in ds.attrs and ds.attrs["solver"] == "block"
        assert not ds.tolerance_not_met.values.any() and ds.attrs["max_relative_bound"] <= 1e-6
        assert ds.ggn_top_eigenvalues.size > 0 and ds.attrs["dtype"] == "float64"


def test_user_errors_of_the_solver_flags(tiny_run, tmp_path, capsys):
    run_dir, data_file = tiny_run
    base = ["overlap", "--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "2",
            "--out", str(tmp_path / "o.nc"), "--no-progress"]
    assert main(base + ["--product-chunk", "0"]) == 2
    _one_line_error(capsys, "--product-chunk")
    assert main(base + ["--solver", "dense"]) == 2  # 22,548 parameters: G is never formed for it
    _one_line_error(capsys, "--solver block")
    assert main(base + ["--damping", "0"]) == 2
    _one_line_error(capsys, "--damping 0")  # names the flag, not the run's weight decay
    assert main(base + ["--rtol", "2"]) == 2
    _one_line_error(capsys, "(0, 1)")


def test_plan_prints_the_plan_and_the_forecast_without_solving(tiny_run, tmp_path, capsys):
    run_dir, data_file = tiny_run
    args = ["overlap", "--plan", "--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "2",
            "--probe-vectors", "2", "--lanczos-steps", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "memory plan: 1 x cpu" in out and "peak per device" in out and "chunk 0:" in out
    assert "forecast from the spectrum probe" in out and "ms per product here" in out
    assert not list(tmp_path.iterdir())  # nothing written
    # devices that are not here: the plan only, and a refusal in one line when nothing fits
    assert main(args + ["--device-memory", "80GB", "--devices", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 x given (80 GiB each" in out and "1 per device" in out and "forecast: needs" in out
    assert main(args + ["--device-memory", "1MB"]) == 2
    _one_line_error(capsys, "GiB per device", "--devices")
    assert main(args + ["--device-memory", "lots"]) == 2
    _one_line_error(capsys, "--device-memory", "80GB")
    assert main(["overlap", "--plan", "--group", "d4"]) == 2
    _one_line_error(capsys, "--plan needs --run")
    assert main(["overlap", "--run", str(run_dir), "--group", "d4"]) == 2
    _one_line_error(capsys, "--out")


def test_plan_for_an_untrained_model_splits_the_rows_when_memory_is_short(capsys):
    # a small UNet at 32x32, N = 8, chunks of 4 right-hand sides: the v's and the elements' rows are split
    assert main(["overlap", "--plan", "--model", "unet", "--preset", "small", "--resolution", "32", "--samples", "8",
                 "--group", "d4", "--device-memory", "2GB", "--rhs-chunk", "4"]) == 0
    out = capsys.readouterr().out
    assert "chunk 0: 4 right-hand sides: v's rows 0-3" in out and "rows 4-7" in out


def test_overlap_command_restores_the_float_precision(tiny_run, tmp_path):
    # The command computes in float64 but must not leave x64 on for what runs after it
    # in the same process (the demo trains the next model right after).
    import jax

    run_dir, data_file = tiny_run
    before = jax.config.jax_enable_x64
    args = ["overlap", "--run", str(run_dir), "--group", "d4", "--metric", "euclidean", "--data", str(data_file),
            "--samples", "2", "--out", str(tmp_path / "ov.nc"), "--no-progress"]
    assert main(args) == 0
    assert jax.config.jax_enable_x64 == before
    with xr.open_dataset(tmp_path / "ov.nc") as ds:
        assert ds.attrs["dtype"] == "float64"


def test_an_existing_result_is_kept_unless_overwrite(tiny_run, tmp_path, capsys):
    # a chi result is hours of work: a second run (here Euclidean only) must not replace it
    run_dir, data_file = tiny_run
    out = tmp_path / "ov.nc"
    args = ["overlap", "--run", str(run_dir), "--group", "d4", "--metric", "euclidean", "--data", str(data_file),
            "--samples", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert main(args) == 2
    _one_line_error(capsys, "exists", "--overwrite")
    assert out.read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    assert main(args[:-3] + ["--out", str(tmp_path), "--no-progress"]) == 2
    _one_line_error(capsys, "is a directory")


def test_sigterm_keeps_the_finished_chunks_and_the_rerun_completes_them(tiny_run, tmp_path, capsys, monkeypatch):
    """SIGTERM (pre-emption) during a chunked solve: the command stops before the next chunk
    with exit status 75; the rerun solves only the remaining chunks and ends equal to an
    uninterrupted run."""
    import os
    import signal

    from symgrad.diagnostics import store
    from symgrad.errors import EXIT_PREEMPTED

    run_dir, data_file = tiny_run
    common = ["overlap", "--run", str(run_dir), "--group", "translate-x", "--stride", "2", "--data", str(data_file),
              "--samples", "2", "--rhs-chunk", "2", "--rtol", "1e-4", "--damping", "1e-2", "--probe-vectors", "0",
              "--no-progress"]  # a chunk per element
    reference = tmp_path / "reference.nc"
    assert main([*common, "--out", str(reference)]) == 0

    out = tmp_path / "preempted.nc"
    save_chunk = store.Partials.save_chunk
    solved = []

    def save_then_preempt(self, c, *args, **kwargs):
        save_chunk(self, c, *args, **kwargs)
        solved.append(c)
        if c == 1:  # the scheduler's SIGTERM arrives while chunk 2 would be next
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(store.Partials, "save_chunk", save_then_preempt)
    capsys.readouterr()
    assert main([*common, "--out", str(out)]) == EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert "pre-empted (SIGTERM) after 2 of 4 chunks" in err and "rerun the same command" in err, err
    assert not out.exists() and sorted(p.name for p in (tmp_path / "preempted.nc.partial").glob("chunk_*.npz")) == [
        "chunk_0.npz", "chunk_1.npz"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again

    solved.clear()
    assert main([*common, "--out", str(out)]) == 0
    assert solved == [2, 3]  # nothing solved twice
    with xr.open_dataset(reference) as a, xr.open_dataset(out) as b:
        for name in ("overlap_matrix_chi", "overlap_cosine_chi", "overlap_matrix_euclidean"):
            np.testing.assert_array_equal(a[name].values, b[name].values)


def test_sigterm_stops_a_single_chunk_solve_within_a_block_step(tiny_run, tmp_path, capsys, monkeypatch):
    """SIGTERM during the one chunk of a solve (the default chunking of a small problem): the
    command stops within one block step (not when the solve ends), exits 75 and writes no
    result (the rerun is the chunked test's above)."""
    import os
    import signal

    from symgrad.diagnostics.ggn import GaussNewtonBlocks
    from symgrad.errors import EXIT_PREEMPTED

    run_dir, data_file = tiny_run
    args = ["overlap", "--run", str(run_dir), "--group", "translate-x", "--stride", "2", "--data", str(data_file),
            "--samples", "2", "--rtol", "1e-8", "--damping", "1e-4", "--probe-vectors", "0", "--no-progress",
            "--out", str(tmp_path / "r.nc")]
    product = GaussNewtonBlocks.__call__
    calls = []

    def product_then_preempt(self, block):
        calls.append(int(block.shape[0]))
        if len(calls) == 12:  # well inside the solve: the scheduler's SIGTERM arrives
            os.kill(os.getpid(), signal.SIGTERM)
        return product(self, block)

    monkeypatch.setattr(GaussNewtonBlocks, "__call__", product_then_preempt)
    assert main(args) == EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert "pre-empted (SIGTERM) during a chi solve" in err and "rerun the same command" in err, err
    assert len(calls) <= 12 + 2, len(calls)  # the products after the signal: at most the step's own
    assert not (tmp_path / "r.nc").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_the_plan_keeps_as_many_vectors_for_the_deflation_space_as_fit():
    # The paper UNet on one 80 GB device: the basis cannot hold the Krylov space, so chunk 0
    # keeps k Lanczos vectors for the deflation space. k is the largest that fits: its 2 k
    # vectors in half of what the blocks leave, 4 k while the space is made; k + 1 would not.
    import jax

    from symgrad.diagnostics import OverlapConfig
    from symgrad.diagnostics.overlap import overlap_plan
    from symgrad.diagnostics.plan import DEFLATION_SHARE, RECYCLE_PHASE
    from symgrad.groups import named_group
    from symgrad.models.registry import build

    model = build("unet", "paper", 128)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
    x = np.random.default_rng(0).normal(size=(64, 128, 128, 4))
    plan = overlap_plan(model.apply, params, x, x, named_group("d4", 128),
                        OverlapConfig(device_memory="80GB", devices=1))
    k, vec = plan.deflation_vectors, plan.n_params * plan.itemsize
    assert 16 <= k < 1024
    solve = sum(size for name, size in plan.parts.items() if not name.startswith("deflation"))
    free = plan.devices.budget - (solve - plan.basis_bytes)  # what the blocks leave
    made = sum(size for name, size in plan.recycle_parts.items() if "Lanczos vectors" not in name)
    assert 2 * k * vec <= DEFLATION_SHARE * free and made + RECYCLE_PHASE * k * vec <= plan.devices.budget
    assert 2 * (k + 1) * vec > DEFLATION_SHARE * free or made + RECYCLE_PHASE * (k + 1) * vec > plan.devices.budget
    assert plan.peak <= plan.devices.budget


def test_on_the_cpu_the_deflation_space_leaves_the_host_its_own_arrays():
    # On the CPU the devices' arrays and the orchestration's share the host: the vectors
    # chunk 0 keeps are as many as fit beside both, so the host peak stays within the memory
    # available (the small UNet at 16x16 with the proxy's basis cap: without this, the plan
    # on a 24 GB host kept 416 vectors for a host peak of 23.7 GiB against 22.9 available).
    import jax

    from symgrad.diagnostics import OverlapConfig
    from symgrad.diagnostics.overlap import overlap_plan
    from symgrad.groups import named_group
    from symgrad.models.registry import build

    model = build("unet", "small", 16)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 4))
    plan = overlap_plan(model.apply, params, x, x, named_group("d4", 16),
                        OverlapConfig(rhs_chunk=8, basis_memory=0.20611, devices=1))
    assert plan.devices.kind.startswith("cpu") and plan.deflation_vectors >= 16
    assert plan.host_peak <= plan.devices.memory * plan.devices.count
