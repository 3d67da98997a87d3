"""The fault classes of issue 23, part 2 (docs/reliability.md): each test shows what a user
sees when it happens, and what is kept. Tiny runs: 10 random 8x8 trajectories, a tiny
UNet, one epoch of 4 steps; the in-process runs share a persistent compilation cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import random_euler_states
from symgrad.cli import main

N, N_TIMES, RES, BATCH = 10, 3, 8, 4  # as tests/conftest.py's tiny run: 6 train trajectories x 2 transitions
# The settings of conftest's tiny run that are no flags, for the command lines of these tests.
TINY_SETTINGS = "split_fractions = [0.6, 0.2, 0.2]\nrollout_trajectories = 0\neval_batch_size = 4\n"
_CONFIG: list[Path] = []  # the file of TINY_SETTINGS (fixture data_file)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A persistent compilation cache for the subprocesses of these tests only: enabling it in
    this (pytest's) process would stay on for every later test file (JAX initialises its
    cache once per process), and reading back CPU programs there crashed test_spectrum."""
    return tmp_path_factory.mktemp("xla-cache")


def _write_data(path, seed=0, n=N, n_times=N_TIMES, res=RES, res_y=None):
    from symgrad import data

    states = random_euler_states(n, n_times, res, seed)
    if res_y is not None:
        states = np.concatenate([states] * (res_y // res), axis=3)
    return data.write_dataset(path, states, np.linspace(0.0, 0.1, n_times), gamma=1.4)


@pytest.fixture(scope="module")
def data_file(tiny_trained_run, tmp_path_factory):
    """The data of conftest's tiny run (shared: nothing writes to it)."""
    config = tmp_path_factory.mktemp("faults-config") / "tiny.toml"
    config.write_text(TINY_SETTINGS)
    _CONFIG[:] = [config]
    return tiny_trained_run[1]


def _args(data_file, out, *extra):
    """``symgrad train`` with the settings of conftest's tiny run."""
    return ["train", "--data", str(data_file), "--out", str(out), "--model", "unet", "--preset", "tiny",
            "--batch-size", str(BATCH), "--epochs", "1", "--no-progress", "--config", str(_CONFIG[0]),
            *map(str, extra)]


def _run(capsys, argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


def _one_line(err: str, command: str, *needles) -> str:
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"symgrad {command}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def trained(tiny_trained_run, data_file):
    """conftest's finished one-epoch run, which ``_args`` reproduces (read-only: the tests
    copy it before they write)."""
    return tiny_trained_run[0]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same_run(a, b):
    from symgrad.train import load_run

    ra, rb = load_run(a), load_run(b)
    assert ra.step == rb.step
    for x, y in zip(_leaves((ra.params, ra.opt_state)), _leaves((rb.params, rb.opt_state)), strict=True):
        np.testing.assert_array_equal(x, y)


# -- 1. a run that dies during its first checkpoint ----------------------------------------


def test_a_run_that_died_in_its_first_checkpoint_starts_again(tmp_path, cache_dir, data_file, trained, capsys,
                                                              monkeypatch):
    """The disk fills during the first save (after metrics.json of epoch 1 was written): the
    message says to rerun the same command, and that rerun trains the run from scratch,
    equal to the uninterrupted run."""
    import errno

    from symgrad.io import write_error
    from symgrad.train.checkpoint import Checkpointer

    def full(self, state, extra):
        raise write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.directory / "3")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", full)
        rc, err = _run(capsys, _args(data_file, out))
    assert rc == 2
    _one_line(err, "train", "No space left on device", "rerun the same command to start again")
    assert (out / "metrics.json").exists()  # the first epoch's record was written before the save
    rc, err = _run(capsys, _args(data_file, out))
    assert rc == 0, err
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    _assert_same_run(trained, out)


# -- 2. settings that would train NaN -----------------------------------------------------


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "nan"], "learning_rate must be a finite number > 0"),
    (["--lr", "inf"], "learning_rate must be a finite number > 0"),
    (["--weight-decay", "nan"], "weight_decay must be a finite number >= 0"),
    (["--grad-clip", "nan"], "grad_clip_norm must be a finite number >= 0"),
    (["--relaxation-weight", "-1"], "relaxation_weight must be a finite number >= 0"),
    (["--max-steps", "-1"], "max_steps must be >= 0"),
    (["--seed", "-1"], "seed must be an integer in 0.."),
    (["--seed", str(2**64)], "seed must be an integer in 0.."),
])
def test_settings_that_cannot_train_are_refused_before_anything_is_written(tmp_path, data_file, capsys,
                                                                           flags, needle):
    out = tmp_path / "run"
    rc, err = _run(capsys, [*_args(data_file, out), *flags])
    assert rc == 2
    _one_line(err, "train", needle)
    assert not out.exists()


def test_a_nan_setting_in_a_config_file_is_refused(tmp_path, data_file, capsys):
    config = tmp_path / "c.toml"
    config.write_text("learning_rate = nan\n")
    rc, err = _run(capsys, [*_args(data_file, tmp_path / "run"), "--config", config])
    assert rc == 2
    _one_line(err, "train", "learning_rate must be a finite number > 0")


@pytest.mark.parametrize("command", ["spectrum", "overlap"])
@pytest.mark.parametrize("damping", ["nan", "inf"])  # nan was refused already (a regression test); inf was not
def test_diagnostics_refuse_a_non_finite_damping(tiny_trained_run, tmp_path, capsys, command, damping):
    run_dir, data_file = tiny_trained_run
    group = ["--group", "d4"] if command == "overlap" else []
    rc, err = _run(capsys, [command, "--run", run_dir, "--data", data_file, "--damping", damping, *group,
                            "--samples", 1, "--out", tmp_path / "r.nc"])
    assert rc == 2
    _one_line(err, command, "--damping", f"got --damping {damping}" if command == "overlap" else f"got {damping}")
    assert not (tmp_path / "r.nc").exists()


def test_generate_refuses_a_seed_out_of_range(tmp_path, capsys):
    out = tmp_path / "d.nc"
    rc, err = _run(capsys, ["generate", "--family", "CE-RP", "--trajectories", 1, "--resolution", 8, "--times", 2,
                            "--seed", "99999999999999999999", "--out", out])
    assert rc == 2
    _one_line(err, "generate", "seed must be an integer in 0..")
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_the_nan_guard_never_checkpoints_non_finite_parameters(tmp_path, cache_dir, data_file, monkeypatch):
    """An update that makes the parameters NaN with a finite loss and gradient (what
    ``--lr nan`` did): the next step's guard must not save them as the last good state."""
    import symgrad.train.setup as train_setup
    from symgrad.errors import SettingError
    from symgrad.train import Checkpointer, TrainConfig, train

    make = train_setup.make_train_step

    def poisoned(*args, **kwargs):
        step_fn = make(*args, **kwargs)

        def step(state, x, y):
            new, metrics = step_fn(state, x, y)
            if int(np.asarray(new.step)) == 2:
                new = new._replace(params=jax.tree.map(lambda p: p * np.float32(np.nan), new.params))
            return new, metrics

        return step

    monkeypatch.setattr(train_setup, "make_train_step", poisoned)
    config = TrainConfig(model="unet", preset="tiny", data=(str(data_file),), epochs=1, batch_size=BATCH,
                         eval_batch_size=BATCH, progress=False, checkpoint_every=1, rollout_trajectories=0,
                         split_fractions=(0.6, 0.2, 0.2))
    with pytest.raises(SettingError, match="non-finite parameters or optimiser state after step 2.* resumes "
                                           "from the checkpoint of step 1"):
        train(config, tmp_path / "run", log=lambda *a: None)
    checkpointer = Checkpointer(tmp_path / "run", read_only=True)
    assert checkpointer.steps() == [1]
    checkpointer.close()


# -- 3. damaged checkpoint bytes ------------------------------------------------------------


def _damage_largest_state_file(run_dir: Path) -> Path:
    from symgrad.train import Checkpointer

    step = Checkpointer(run_dir, read_only=True).latest_step()
    files = [p for p in (run_dir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as fh:
        fh.seek(largest.stat().st_size // 2)
        fh.write(b"\xff" * 8)
    return largest


def test_damaged_checkpoint_bytes_are_refused_by_training_and_the_diagnostics(tmp_path, data_file, trained,
                                                                              capsys):
    from symgrad.errors import SymgradError
    from symgrad.train import load_run

    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    _damage_largest_state_file(run_dir)
    with pytest.raises(SymgradError, match="damaged"):
        load_run(run_dir)
    result = tmp_path / "eq.nc"
    rc, err = _run(capsys, ["equivariance", "--run", run_dir, "--group", "d4", "--samples", 1, "--out", result])
    assert rc == 2
    _one_line(err, "equivariance", "is damaged", "SHA-256", "retrain")
    assert not result.exists()
    rc, err = _run(capsys, [*_args(data_file, run_dir), "--epochs", 2])
    assert rc == 2
    _one_line(err, "train", "is damaged")


def test_a_checkpoint_of_nan_parameters_never_reaches_a_diagnostic(tmp_path, trained, capsys):
    """A checkpoint whose digests match but whose values are NaN (the "last good state" that
    an older NaN guard saved) is refused by every reader."""
    from symgrad.errors import SymgradError
    from symgrad.train import load_run
    from symgrad.train.checkpoint import Checkpointer
    from symgrad.train.state import TrainState

    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    good = load_run(run_dir)
    nan = TrainState(jax.tree.map(lambda x: np.full_like(np.asarray(x), np.nan), good.params), good.opt_state,
                     np.asarray(good.step + 1, np.int32), np.zeros(2, np.uint32))
    checkpointer = Checkpointer(run_dir, keep=10)
    checkpointer.save(nan, {"epoch_loss_sum": 0.0, "epoch_loss_count": 0})
    checkpointer.close()
    with pytest.raises(SymgradError, match=f"non-finite .* delete .*{good.step + 1} to fall back to step {good.step}"):
        load_run(run_dir)
    rc, err = _run(capsys, ["equivariance", "--run", run_dir, "--group", "d4", "--samples", 1,
                            "--out", tmp_path / "eq.nc"])
    assert rc == 2
    _one_line(err, "equivariance", "non-finite")
    assert load_run(run_dir, step=good.step).step == good.step  # the older checkpoint is intact


# -- 4. data changed under a run ------------------------------------------------------------


def test_data_changed_under_a_paused_run_is_refused(tmp_path, cache_dir, data_file, capsys):
    data = _write_data(tmp_path / "data.nc", seed=0)
    out = tmp_path / "run"
    rc, err = _run(capsys, [*_args(data, out), "--max-steps", 1])
    assert rc == 0, err
    os.unlink(data)
    _write_data(data, seed=1)  # regenerated with another seed at the same path
    rc, err = _run(capsys, _args(data, out))
    assert rc == 2
    _one_line(err, "train", str(data.resolve()), "changed since the run started")
    assert json.loads((out / "status.json").read_text())["step"] == 1  # the run is kept as it was
    assert [p for p, _ in json.loads((out / "run.json").read_text())["data_digests"]] == [str(data.resolve())]


def test_a_copy_of_the_training_data_is_not_held_out(tmp_path, trained, data_file):
    from symgrad import inputs

    copy = tmp_path / "renamed.nc"
    shutil.copyfile(data_file, copy)
    run_inputs = inputs.load(trained, [copy])
    samples, source = inputs.held_out_samples(run_inputs)
    expected = json.loads((trained / "run.json").read_text())["split"]["test"]
    assert samples.tolist() == expected and "test split of the run" in source
    other = _write_data(tmp_path / "other.nc", seed=5)
    samples, source = inputs.held_out_samples(inputs.load(trained, [other]))
    assert samples.tolist() == list(range(N)) and "not trained on" in source


# -- 5. SIGTERM during the start-up ---------------------------------------------------------


def test_sigterm_during_the_start_up_exits_75_and_the_rerun_trains(tmp_path, cache_dir, data_file, trained,
                                                                   capsys):
    """TERM as soon as RUN/lock exists (the start-up: data, sigma, compilation): exit status
    75, so that the SLURM job requeues; the rerun trains the run as if never stopped."""
    out = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "symgrad", *_args(data_file, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "lock").exists():
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, (proc.returncode, stdout, stderr)
    assert stdout.strip().splitlines()[-1].startswith("preempted"), stdout
    assert not (out / "status.json").exists() or json.loads((out / "status.json").read_text())["status"] == "preempted"
    rc, err = _run(capsys, _args(data_file, out))
    assert rc == 0, err
    _assert_same_run(trained, out)


# -- 6. one line where a traceback was ------------------------------------------------------


def test_data_that_cannot_train_is_one_line(tmp_path, data_file, capsys):
    from symgrad import data

    empty = data.write_dataset(tmp_path / "empty.nc", random_euler_states(0, N_TIMES, RES, 0),
                               np.linspace(0.0, 0.1, N_TIMES), gamma=1.4)
    rc, err = _run(capsys, _args(empty, tmp_path / "r0"))
    assert rc == 2
    _one_line(err, "train", "hold no trajectories", "--data")
    one_time = _write_data(tmp_path / "one.nc", n_times=1)
    rc, err = _run(capsys, _args(one_time, tmp_path / "r1"))
    assert rc == 2
    _one_line(err, "train", "hold 1 time per trajectory", "at least 2")
    assert not (tmp_path / "r0").exists() and not (tmp_path / "r1").exists()  # no empty run directory


def test_an_existing_file_as_out_is_one_line_and_kept(tmp_path, data_file, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    rc, err = _run(capsys, _args(data_file, path))
    assert rc == 2
    _one_line(err, "train", "--out", "is a file")
    assert path.read_text() == "mine"


def test_a_non_square_data_file_is_one_line_for_the_diagnostics(tiny_trained_run, tmp_path, capsys):
    run_dir, _ = tiny_trained_run
    rect = _write_data(tmp_path / "rect.nc", n=4, res_y=2 * RES)
    rc, err = _run(capsys, ["equivariance", "--run", run_dir, "--data", rect, "--group", "d4", "--samples", 1,
                            "--out", tmp_path / "e.nc"])
    assert rc == 2
    _one_line(err, "equivariance", "--data", "8x16 grid")


@pytest.mark.parametrize("name, content", [("run.json", "null"), ("config.json", "null"), ("run.json", "[]"),
                                           ("run.json", '{"format_version": 3}')])
def test_run_files_of_the_wrong_shape_are_one_line(tmp_path, data_file, trained, capsys, name, content):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    (run_dir / name).write_text(content)
    for argv, command in ((_args(data_file, run_dir), "train"),
                          (["equivariance", "--run", run_dir, "--group", "d4", "--out", tmp_path / "e.nc"],
                           "equivariance")):
        rc, err = _run(capsys, argv)
        assert rc == 2
        _one_line(err, command, f"{run_dir / name} is corrupt", "restore it")


def test_truncated_overlap_chunks_are_said_and_solved_again(tmp_path, capsys):
    from symgrad.diagnostics.store import Partials

    partials = Partials(tmp_path / "p", "abc")
    elements = {0: {"value": np.arange(3.0)}}
    partials.save_chunk(0, elements, {"w": np.ones(2)}, {"seconds": 1})
    partials.save_chunk(1, elements, None, {"seconds": 2})
    again, v_side, log = partials.load_chunk(0)
    np.testing.assert_array_equal(again[0]["value"], np.arange(3.0))
    assert log == {"seconds": 1}
    chunk = tmp_path / "p" / "chunk_1.npz"
    chunk.write_bytes(chunk.read_bytes()[:50])  # cut short, digest kept
    assert partials.load_chunk(1) is None
    assert "chunk_1.npz is damaged" in capsys.readouterr().err and not chunk.exists()
    (tmp_path / "p" / "chunk_0.npz.sha256").unlink()  # unverified (an older symgrad's) and cut short
    (tmp_path / "p" / "chunk_0.npz").write_bytes(b"PK\x03\x04")
    assert partials.load_chunk(0) is None
    assert "chunk_0.npz is damaged" in capsys.readouterr().err
    (tmp_path / "p" / "spectrum.json").write_text('{"top": [1, ')
    assert partials.load_json("spectrum") is None


# -- 7. sweep files -------------------------------------------------------------------------


_SWEEP = '[sweep]\ndata = ["d.nc"]\nmodels = ["unet"]\ngroups = ["d4"]\n'


@pytest.mark.parametrize("text, needles", [
    (_SWEEP + "seed = [1]\n", ["unknown key of [sweep] 'seed'", "did you mean 'seeds'"]),
    (_SWEEP.replace("groups", "group"), ["unknown key of [sweep] 'group'", "did you mean 'groups'"]),
    (_SWEEP + "[overlapp]\nrtol = 1e-3\n", ["unknown table 'overlapp'", "did you mean 'overlap'"]),
    (_SWEEP + "[equivariance]\nsampels = 3\n", ["equivariance-d4-unet-tiny-seed0", "--sampels"]),
    (_SWEEP + 'seeds = ["zero"]\n', ["seeds must be an integer"]),
    (_SWEEP.replace('["unet"]', "3"), ["models must be a string"]),
    (_SWEEP.replace('["d4"]', '["so2"]'), ["unknown group 'so2'"]),
    (_SWEEP.replace('["unet"]', '["unett"]'), ["unknown model 'unett'"]),
    (_SWEEP + "[train]\nlr = nan\n", ["train-unet-tiny-seed0", "learning_rate must be a finite number"]),
    (_SWEEP + "[train]\nepochs = \"two\"\n", ["train-unet-tiny-seed0", "--epochs"]),
    (_SWEEP + "[overlap]\nrtol = 2\n", ["overlap-d4-unet-tiny-seed0", "--rtol must lie in (0, 1)"]),
    (_SWEEP + "[slurm]\npartiton = \"gpu\"\n", ["unknown key of [slurm] 'partiton'"]),
    (_SWEEP + "[generate]\nfamily = \"CE-RP\"\ntrajectories = 0\n", ["generate", "trajectories must be >= 1"]),
])
def test_sweep_files_are_validated_before_anything_runs(tmp_path, capsys, text, needles):
    path = tmp_path / "s.toml"
    path.write_text(text)
    rc, err = _run(capsys, ["sweep", path, "--dry-run"])
    assert rc == 2
    _one_line(err, "sweep", str(path), *needles)
    assert capsys.readouterr().out == ""  # no job was printed, none ran


# -- 8. leftovers ---------------------------------------------------------------------------


def test_generate_into_a_directory_is_refused_before_the_work(tmp_path, capsys):
    out = tmp_path / "dir"
    out.mkdir()
    for extra in ([], ["--overwrite"]):
        rc, err = _run(capsys, ["generate", "--family", "CE-RP", "--trajectories", 1, "--resolution", 8,
                                "--times", 2, "--out", out, *extra])
        assert rc == 2
        _one_line(err, "generate", "is a directory", "give a file name")
    assert list(out.iterdir()) == [] and not Path(f"{out}.partial").exists()  # nothing was computed


def test_leftovers_of_killed_writers_are_removed_and_a_damaged_cache_converted_again(tmp_path, data_file, trained,
                                                                                     capsys):
    from symgrad.data import open_dataset
    from symgrad.data.cache import cache_key, open_cache

    dataset = open_dataset([data_file])
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key(dataset)
    stale = cache / f".{key}.npy.tmp-4242"  # a conversion killed with kill -9
    stale.write_bytes(b"\0" * 1000)
    states = open_cache(dataset, cache)
    np.testing.assert_array_equal(states, dataset.states(slice(0, N)))
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.npy"]
    truncated = cache / f"{key}.npy"
    truncated.write_bytes(truncated.read_bytes()[:300])
    np.testing.assert_array_equal(open_cache(dataset, cache), dataset.states(slice(0, N)))
    assert "is damaged" in capsys.readouterr().err
    # a run directory's stale temporary files go when the run resumes
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    (run_dir / ".run.json.tmp-4242").write_text("{")
    (run_dir / "metrics.json").write_text("[1, 2]")  # damaged: the intact checkpoints still resume
    rc, err = _run(capsys, [*_args(data_file, run_dir), "--epochs", 2])
    assert rc == 0, err
    assert not list(run_dir.glob(".*.tmp-*"))
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]  # epoch 0's record recovered from metrics.nc
    assert (run_dir / "metrics.json.damaged").read_text() == "[1, 2]"
