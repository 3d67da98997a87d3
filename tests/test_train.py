"""Training: loss decrease, 1 vs 4 devices, exact resume after kill -9 and SIGTERM,
NaN stop, corrupt/missing checkpoints, load_run round trip, config handling.

Subprocess runs share a persistent XLA compilation cache, so only the first run of each
configuration pays for compilation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
import symgrad_faults  # noqa: E402
import test_train_support as support  # noqa: E402


from symgrad.cli import main as cli_main  # noqa: E402
from symgrad.errors import EXIT_PREEMPTED, SymgradError  # noqa: E402
from symgrad.train import (  # noqa: E402
    Checkpointer, TrainConfig, batch_order, load_run, train, training_sigma,
)
from symgrad.errors import SettingError  # noqa: E402

EPOCHS, BATCH, STEPS_PER_EPOCH = 3, 8, 3  # 8 trajectories x 5 transitions; 6 train -> 30
LR = "3e-3"  # as typed on the command line (tests replace this exact string)
COMMON = ["--model", "unet", "--preset", "tiny", "--batch-size", str(BATCH), "--lr", LR,
          "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("xla-cache")
    previous = {k: getattr(jax.config, k) for k in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield path
    for k, v in previous.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "advect.nc"
    # Written by a child process, so that the only handle this process ever holds on the
    # file is the reader's shared one (netCDF-C's double-open crash: symgrad/data/reader.py).
    tests = str(Path(__file__).resolve().parent)
    subprocess.run([sys.executable, "-c",
                    f"import sys; sys.path.insert(0, {tests!r}); import test_train_support as s; "
                    f"s.write_pdegym({str(path)!r}, s.make_states(n_samples=8, n_times=6, n=16))"],
                   check=True, timeout=120)
    return path


PLUGINS = Path(__file__).resolve().parent / "plugins"  # sitecustomize: faults for subprocesses


def _env(cache_dir, devices=1, *, step_delay=0.0, nan_step=-1):
    """The environment of a ``symgrad`` subprocess; ``step_delay`` and ``nan_step`` inject
    faults into its training steps (tests/plugins/sitecustomize.py)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), *filter(None, [env.get("PYTHONPATH")])])
    env.pop(symgrad_faults.DELAY_ENV, None)
    env.pop(symgrad_faults.NAN_ENV, None)
    if step_delay:
        env[symgrad_faults.DELAY_ENV] = str(step_delay)
    if nan_step >= 0:
        env[symgrad_faults.NAN_ENV] = str(nan_step)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(cache_dir, *args, devices=1, check=True, timeout=300, **faults):
    proc = subprocess.run(support.cli_command("train", *args), env=_env(cache_dir, devices, **faults),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_bitwise(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _wait_for_file(path: Path, proc, timeout=240) -> None:
    """Poll until ``path`` exists, while ``proc`` (the run writing it) is still alive."""
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None and time.time() - t0 < timeout, proc.communicate()
        time.sleep(0.02)


def _wait_for_checkpoint(run_dir: Path, proc, below: int, timeout=240) -> int:
    """Poll until a finalised checkpoint (an all-digit step directory) exists."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = run_dir / "checkpoints"
        steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.is_dir() else []
        if steps:
            assert steps[-1] < below, "run finished before it could be interrupted"
            return steps[-1]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _reference_args(data_file, out):
    """The arguments of ``reference_run`` with another ``--out``."""
    return [*COMMON, "--data", data_file, "--out", out, "--epochs", EPOCHS, "--checkpoint-every", 2, "--keep", 10]


def _assert_equals_reference(reference_run, out):
    """``out`` finished with parameters and optimiser state bitwise equal to the reference run."""
    a, b = load_run(reference_run), load_run(out)
    assert a.step == b.step == EPOCHS * STEPS_PER_EPOCH
    _assert_bitwise(a.params, b.params)
    _assert_bitwise(a.opt_state, b.opt_state)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir, data_file):
    """An uninterrupted CLI run, 3 epochs x 3 steps, every checkpoint kept."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    _cli(cache_dir, *_reference_args(data_file, out))
    return out


# -- in-process -----------------------------------------------------------------------


def test_loss_decreases_and_load_run_round_trip(tmp_path, cache_dir, data_file):
    config = TrainConfig(model="unet", preset="tiny", data=(str(data_file),), epochs=20,
                         batch_size=BATCH, learning_rate=3e-3, progress=False,
                         checkpoint_every=1000, rollout_trajectories=1, log_every=4)
    result = train(config, tmp_path / "run", log=lambda *a: None)
    assert result.status == "finished" and result.step == 20 * STEPS_PER_EPOCH
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    first, last = history[0]["train_smse"], history[-1]["train_smse"]
    assert last < 0.1 * first, (first, last)
    assert history[-1]["val_smse"] < 0.2 * history[0]["val_smse"]

    import xarray as xr

    with xr.open_dataset(tmp_path / "run" / "metrics.nc") as ds:
        assert ds["val_rollout_smse"].dims == ("epoch", "lead_time")
        assert ds["val_rollout_smse"].shape == (20, 5)
        assert np.all(np.isfinite(ds["train_smse"].values))
        baseline_val = float(ds["val_persistence_smse"])
        baseline_rollout = ds["val_rollout_persistence_smse"].values

    # the persistence baseline, recomputed from the data file and the stored split
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    # (the states that data_file holds, made again: this process must not open the file itself)
    data = support.make_states(n_samples=8, n_times=6, n=16).astype(np.float64)
    val = data[np.asarray(info["split"]["val"])]
    sigma = np.asarray(info["sigma"])

    def smse(a, b):
        return np.mean(((a - b) / sigma) ** 2, axis=(-3, -2, -1))

    np.testing.assert_allclose(baseline_val, np.mean(smse(val[:, :-1], val[:, 1:])), rtol=1e-4)
    np.testing.assert_allclose(baseline_rollout, np.mean(smse(val[:1, :1], val[:1, 1:]), axis=0), rtol=1e-4)

    # TensorBoard events, read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert [e.step for e in scalars["train/loss"]] == list(range(4, 20 * STEPS_PER_EPOCH + 1, 4))
    for tag in ("train/learning_rate", "train/grad_norm", "train/samples_per_second", "train/data_wait_fraction"):
        assert len(scalars[tag]) == len(scalars["train/loss"]), tag
    assert all(e.value == pytest.approx(3e-3) for e in scalars["train/learning_rate"])
    assert all(0.0 <= e.value <= 1.0 for e in scalars["train/data_wait_fraction"])
    np.testing.assert_allclose([e.value for e in scalars["val/smse"]], [h["val_smse"] for h in history], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in scalars["val/rollout_smse/lead_5"]],
                               [h["val_rollout_smse"][4] for h in history], rtol=1e-6)
    assert [e.step for e in scalars["val/smse"]] == [h["step"] for h in history]

    run = load_run(tmp_path / "run")
    _assert_bitwise(run.params, result.state.params)
    _assert_bitwise(run.opt_state, result.state.opt_state)
    assert run.step == result.step and run.epoch == 20
    assert run.config == TrainConfig.from_dict(run.config).to_dict()
    assert run.config["data"] == [str(Path(data_file).resolve())]
    assert run.info.data_paths == (str(Path(data_file).resolve()),)
    assert run.info.weight_decay == 1e-6 and run.model.name == "unet"
    from symgrad.data import TransitionSource, open_dataset, split_trajectories

    expected_split = split_trajectories(8, 0, (0.8, 0.1, 0.1))
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(run.info.split[k], expected_split[k])
    dataset = open_dataset([str(data_file)])
    source = TransitionSource(dataset, run.info.split["train"])
    np.testing.assert_allclose(run.sigma, training_sigma(source), rtol=1e-12)
    assert run.sigma.shape == (4,) and run.sigma[1] == run.sigma[2]
    # apply_fn is the physical map sigma * apply(params, x / sigma)
    x, y = TransitionSource(dataset, run.info.split["val"]).get(np.arange(4))
    pred = np.asarray(run.apply_fn(run.params, x))
    sigma = run.sigma.astype(np.float32)
    np.testing.assert_allclose(pred, sigma * np.asarray(run.model.apply(run.params, x / sigma)),
                               rtol=1e-5, atol=1e-6)
    from symgrad.loss import smse

    assert float(np.mean(smse(pred, y, run.sigma))) < 0.2 * history[0]["val_smse"]


def test_the_data_selection_is_stored_and_honoured(tmp_path, cache_dir, data_file):
    """The first K trajectories of each --data entry (a file, and a directory of two shards
    that counts as one entry) and a subset of the times: the split holds only selected
    trajectories, the transitions are the consecutive pairs of the selected times, the
    rollout spans them, and all of it is recorded in the run."""
    states = support.make_states(n_samples=8, n_times=6, n=16, seed=1)
    shards = tmp_path / "family"
    shards.mkdir()
    support.write_pdegym(shards / "data_0.nc", states[:4])
    support.write_pdegym(shards / "data_1.nc", states[4:])
    second = shards
    config = TrainConfig(model="unet", preset="tiny", data=(str(data_file), str(second)), epochs=1,
                         batch_size=BATCH, progress=False, first_trajectories=5, time_indices=(0, 1, 2, 4),
                         rollout_trajectories=1, split_fractions=(0.6, 0.2, 0.2))
    result = train(config, tmp_path / "run", log=lambda *a: None)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = sorted(i for part in info["split"].values() for i in part)
    assert chosen == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]  # the first 5 of each entry (4 + 1 from the shards)
    assert info["time_indices"] == [0, 1, 2, 4] and info["first_trajectories"] == 5
    assert info["n_train_transitions"] == 3 * len(info["split"]["train"])  # (0,1), (1,2), (2,4)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["time_indices"] == [0, 1, 2, 4] and stored["first_trajectories"] == 5
    assert set(stored) == {f.name for f in dataclasses.fields(TrainConfig)}  # the config, nothing else
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(history[0]["val_rollout_smse"]) == 3  # lead times over the selected times
    assert result.status == "finished"

    from symgrad.data import TransitionSource, open_dataset

    source = TransitionSource(open_dataset([str(data_file), str(second)]), info["split"]["train"],
                              [(0, 1), (1, 2), (2, 4)])
    assert len(source) == info["n_train_transitions"]
    with pytest.raises(SymgradError, match="time_indices go up to 9"):
        train(dataclasses.replace(config, time_indices=(0, 9)), tmp_path / "bad", log=lambda *a: None)
    with pytest.raises(SymgradError, match="time_indices must be at least 2 increasing"):
        TrainConfig(time_indices=(3, 1))


def test_one_progress_bar_for_the_whole_run(tmp_path, cache_dir, data_file, capsys):
    config = TrainConfig(model="unet", preset="tiny", data=(str(data_file),), epochs=3, batch_size=BATCH,
                         max_steps=5, rollout_trajectories=0)
    train(config, tmp_path / "run", log=lambda *a: None)
    bars = capsys.readouterr().err.replace("\r", "\n")
    assert "train: 100%" in bars and "5/5" in bars  # across epochs: 3 + 2 steps, one total
    assert "epoch=2/3" in bars and bars.count("train:   0%") <= 1


def test_batch_order_is_pure_function_of_seed_and_epoch():
    a = batch_order(0, 3, 100)
    np.testing.assert_array_equal(a, batch_order(0, 3, 100))
    assert sorted(a.tolist()) == list(range(100))
    assert not np.array_equal(a, batch_order(0, 4, 100))
    assert not np.array_equal(a, batch_order(1, 3, 100))


def test_config_toml_and_cli_precedence(tmp_path):
    from symgrad.cli import build_parser
    from symgrad.commands.train import config_from_args

    cfg = TrainConfig.from_toml(Path(__file__).resolve().parent.parent / "experiments" / "paper-unet.toml")
    assert (cfg.learning_rate, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (5e-4, 1e-6, 64, 90)
    for model in ("unet", "vit", "gcnn", "relaxed"):  # the study's data selection, in every paper config
        paper = TrainConfig.from_toml(Path(__file__).resolve().parent.parent / "experiments" / f"paper-{model}.toml")
        assert (paper.model, paper.first_trajectories, paper.time_indices) == (model, 5000, tuple(range(16)))
    toml = tmp_path / "x.toml"
    toml.write_text('[train]\nmodel = "vit"\nepochs = 7\nlearning_rate = 1e-3\n')
    args = build_parser().parse_args(["train", "--config", str(toml), "--out", "r", "--epochs", "3",
                                      "--data", "a.nc", "b.nc"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.epochs, cfg.learning_rate, cfg.data) == ("vit", 3, 1e-3, ("a.nc", "b.nc"))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # as config.json holds it
    toml.write_text("[train]\nlearning_rat = 1e-3\n")
    with pytest.raises(SymgradError, match="unknown training config keys"):
        TrainConfig.from_toml(toml)
    with pytest.raises(SymgradError, match="schedule"):
        TrainConfig(schedule="linear")


def test_wrong_typed_config_values_are_one_line_errors_naming_the_field(tmp_path, capsys):
    from symgrad.cli import main

    toml = tmp_path / "bad.toml"
    toml.write_text('[train]\nepochs = "two"\nlearning_rate = "fast"\nprogress = 1\nsplit_fractions = [0.5, 0.5]\n')
    with pytest.raises(SymgradError) as info:
        TrainConfig.from_toml(toml)
    msg = str(info.value)
    for part in ("epochs must be an integer, got 'two'", "learning_rate must be a number",
                 "progress must be true or false", "split_fractions must be a list of 3 numbers"):
        assert part in msg, msg
    assert main(["train", "--config", str(toml), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epochs must be an integer" in err, err


def test_setting_errors_name_config_fields_and_the_command_line_its_flags(tmp_path, data_file, capsys):
    config = TrainConfig(model="unet", preset="tiny", data=(str(data_file),), batch_size=64, progress=False)
    with pytest.raises(SettingError, match="fewer than one batch of 64; use a smaller 'batch_size'"):
        train(config, tmp_path / "library", log=lambda *a: None)
    rc, err = _train_cli_inprocess(capsys, "--data", data_file, "--batch-size", 64, "--no-progress",
                                   "--out", tmp_path / "cli")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "fewer than one batch of 64; use a smaller --batch-size or more data" in err, err
    rc, err = _train_cli_inprocess(capsys, "--out", tmp_path / "no-data")
    assert rc == 2 and "no training data: give --data" in err, err


def test_a_non_finite_step_in_process_stops_with_the_last_good_state(tmp_path, cache_dir, data_file, monkeypatch):
    """Faults are injected by the tests: here the step function of the second step sees NaN."""
    import symgrad.train.setup as train_setup

    monkeypatch.setattr(train_setup, "make_train_step", symgrad_faults.faulty(train_setup.make_train_step, nan_step=1))
    config = TrainConfig(model="unet", preset="tiny", data=(str(data_file),), epochs=1, batch_size=BATCH,
                         learning_rate=3e-3, progress=False, rollout_trajectories=0)
    with pytest.raises(SettingError, match="non-finite loss or gradient at step 2") as info:
        train(config, tmp_path / "run", log=lambda *a: None)
    assert "last good state (step 1)" in str(info.value)
    assert "lower 'learning_rate' or set 'grad_clip_norm'" in str(info.value)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "non-finite" and status["failed_step"] == 2 and status["failed_batch"] == 1
    assert load_run(tmp_path / "run").step == 1


# -- subprocess runs ------------------------------------------------------------------


def test_one_and_four_devices_agree(tmp_path, cache_dir, data_file, reference_run):
    k = 4  # the 1-device reference run keeps its checkpoint of step 4
    _cli(cache_dir, *COMMON, "--data", data_file, "--out", tmp_path / "d4", "--epochs", EPOCHS,
         "--max-steps", k, devices=4)
    runs = {1: load_run(reference_run, step=k), 4: load_run(tmp_path / "d4")}
    assert json.loads((tmp_path / "d4" / "run.json").read_text())["n_devices"] == 4
    assert json.loads((reference_run / "run.json").read_text())["n_devices"] == 1
    assert json.loads((tmp_path / "d4" / "status.json").read_text())["status"] == "max_steps"
    assert runs[1].step == runs[4].step == k
    # Sharding changes the float32 reduction order of the gradient. Adam divides by the
    # gradient's own running scale, so where a gradient is near zero that rounding is not
    # damped: the update of such a parameter can move by a fraction of one step (lr). The
    # tolerance is 5% of one step, not a relative one.
    for a, b in zip(_leaves(runs[1].params), _leaves(runs[4].params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=0.05 * float(LR))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one_process_with_two_devices(tmp_path, cache_dir, data_file, reference_run):
    """``jax.distributed`` on localhost: two processes of one CPU device each, each loading
    only its half of every global batch, reach the parameters of one process with two
    devices bit for bit (the same mesh, so the same reduction order), and those of the
    one-device run to the tolerance of the test above."""
    k = 4
    args = [*COMMON, "--data", data_file, "--epochs", EPOCHS, "--max-steps", k]
    port = _free_port()
    procs = [subprocess.Popen(support.cli_command("train", *args, "--out", tmp_path / "two-processes",
                                                  "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
                                                  "--process-id", i),
                              env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr
    assert "max_steps: step 4" in outputs[0][0] and "max_steps" not in outputs[1][0]  # the primary reports
    _cli(cache_dir, *args, "--out", tmp_path / "two-devices", devices=2)
    two_processes, two_devices = load_run(tmp_path / "two-processes"), load_run(tmp_path / "two-devices")
    assert json.loads((tmp_path / "two-processes" / "run.json").read_text())["n_devices"] == 2
    assert two_processes.step == two_devices.step == k
    _assert_bitwise(two_processes.params, two_devices.params)
    _assert_bitwise(two_processes.opt_state, two_devices.opt_state)
    for a, b in zip(_leaves(load_run(reference_run, step=k).params), _leaves(two_processes.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=0.05 * float(LR))


def test_training_from_the_data_cache_equals_training_from_the_files(tmp_path, cache_dir, data_file, reference_run):
    out = tmp_path / "cached"
    _cli(cache_dir, *_reference_args(data_file, out), "--data-cache", tmp_path / "states")
    assert len(list((tmp_path / "states").glob("*.npy"))) == 1
    assert json.loads((out / "config.json").read_text())["data_cache"] == str(tmp_path / "states")
    _assert_equals_reference(reference_run, out)


def test_kill9_then_resume_is_bitwise_identical(tmp_path, cache_dir, data_file, reference_run):
    out = tmp_path / "killed"
    args = _reference_args(data_file, out)
    proc = subprocess.Popen(support.cli_command("train", *args), env=_env(cache_dir, step_delay=0.7),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        step = _wait_for_checkpoint(out, proc, below=EPOCHS * STEPS_PER_EPOCH)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < step < EPOCHS * STEPS_PER_EPOCH
    resumed = _cli(cache_dir, *args)
    assert "resuming" in resumed.stdout
    _assert_equals_reference(reference_run, out)


def test_kill9_during_startup_then_rerun_equals_uninterrupted_run(tmp_path, cache_dir, data_file, reference_run):
    # killed after config.json but before the first checkpoint: a requeued job reruns the
    # same command, which must start cleanly (and the dead process's lock must not block it)
    out = tmp_path / "startup"
    args = _reference_args(data_file, out)
    proc = subprocess.Popen(support.cli_command("train", *args), env=_env(cache_dir, step_delay=0.7),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_file(out / "config.json", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    ck = out / "checkpoints"
    assert not (ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())), "killed too late"
    rerun = _cli(cache_dir, *args)
    assert "resuming" not in rerun.stdout
    _assert_equals_reference(reference_run, out)


def test_a_second_trainer_on_the_same_run_is_refused(tmp_path, cache_dir, data_file, reference_run):
    out = tmp_path / "shared"
    args = _reference_args(data_file, out)
    first = subprocess.Popen(support.cli_command("train", *args), env=_env(cache_dir, step_delay=0.5),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_file(out / "lock", first)
        second = _cli(cache_dir, *args, check=False)
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    err = second.stderr.strip()
    assert second.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"process {first.pid}" in err and "in use" in err
    _assert_equals_reference(reference_run, out)


def test_sigterm_checkpoints_and_resume_continues(tmp_path, cache_dir, data_file, reference_run):
    out = tmp_path / "preempted"
    args = [*COMMON, "--data", data_file, "--out", out, "--epochs", EPOCHS, "--checkpoint-every", 100]
    proc = subprocess.Popen(support.cli_command("train", *args), env=_env(cache_dir, step_delay=0.7),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The first checkpoint is the end of epoch 1; terminate during epoch 2.
    _wait_for_checkpoint(out, proc, below=EPOCHS * STEPS_PER_EPOCH)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED == 75, stderr  # not 0: the run is not complete
    assert stdout.splitlines()[-1].startswith("preempted: step"), stdout
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "preempted"
    stopped = status["step"]
    assert STEPS_PER_EPOCH <= stopped < EPOCHS * STEPS_PER_EPOCH
    assert Checkpointer(out, read_only=True).latest_step() == stopped
    _cli(cache_dir, *args)
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    a, b = load_run(reference_run), load_run(out)
    assert b.step == EPOCHS * STEPS_PER_EPOCH
    _assert_bitwise(a.params, b.params)
    _assert_bitwise(a.opt_state, b.opt_state)


def test_nan_stops_with_report_and_last_good_checkpoint(tmp_path, cache_dir, data_file, reference_run):
    out = tmp_path / "nan"
    bad = 4  # the fifth step (epoch 2, batch 1) sees a NaN batch
    proc = _cli(cache_dir, *COMMON, "--data", data_file, "--out", out, "--epochs", EPOCHS,
                "--checkpoint-every", 100, check=False, nan_step=bad)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("symgrad train: error: non-finite loss or gradient at step 5")
    assert "epoch 2, batch 1" in err and "last good state (step 4)" in err
    assert "lower --lr or set --grad-clip" in err  # the command line names its flags
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "non-finite" and status["failed_step"] == bad + 1
    assert status["failed_batch"] == 1 and len(status["transition_indices"]) == BATCH
    good = load_run(out)
    assert good.step == bad
    _assert_bitwise(good.params, load_run(reference_run, step=bad).params)
    _assert_bitwise(good.opt_state, load_run(reference_run, step=bad).opt_state)


# -- broken run directories (cheap: fail before any compilation) ----------------------


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _train_cli_inprocess(capsys, *args) -> tuple[int, str]:
    rc = cli_main(["train", *map(str, args)])
    return rc, capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, data_file, reference_run, capsys):
    run_dir = _copy_run(reference_run, tmp_path / "corrupt")
    latest = Checkpointer(run_dir, read_only=True).latest_step()
    for f in (run_dir / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    # caught by the checkpoint's SHA-256 (tests/test_faults.py); without it, by orbax's read
    with pytest.raises(SymgradError, match="is damaged") as info:
        load_run(run_dir)
    assert "fall back to step" in str(info.value)
    rc, err = _train_cli_inprocess(capsys, *COMMON, "--data", data_file, "--out", run_dir,
                                   "--epochs", EPOCHS + 1)
    assert rc == 2 and "is damaged" in err and len(err.strip().splitlines()) == 1
    (run_dir / "checkpoints" / str(latest) / "sha256.json").unlink()
    with pytest.raises(SymgradError, match="unreadable"):
        load_run(run_dir)
    # an older, intact checkpoint still loads explicitly
    assert load_run(run_dir, step=latest - 1 if latest - 1 in
                    Checkpointer(run_dir, read_only=True).steps() else 4).step < latest


def test_missing_checkpoint_is_a_clear_error_not_a_restart(tmp_path, data_file, reference_run, capsys):
    run_dir = _copy_run(reference_run, tmp_path / "missing")
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(SymgradError, match="no checkpoint"):
        load_run(run_dir)
    rc, err = _train_cli_inprocess(capsys, *COMMON, "--data", data_file, "--out", run_dir,
                                   "--epochs", EPOCHS)
    assert rc == 2 and "no checkpoint" in err and "--overwrite" in err
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    rc, err = _train_cli_inprocess(capsys, *COMMON, "--data", data_file, "--out", tmp_path / "none",
                                   "--resume")
    assert rc == 2 and "--resume given" in err
    with pytest.raises(SymgradError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_resume_refuses_changed_config(tmp_path, data_file, reference_run, capsys):
    run_dir = _copy_run(reference_run, tmp_path / "changed")
    changed = [a if a != LR else "1e-2" for a in COMMON]
    rc, err = _train_cli_inprocess(capsys, *changed, "--data", data_file, "--out", run_dir,
                                   "--epochs", EPOCHS)
    assert rc == 2 and "learning_rate" in err and "--force" in err


_SHARD_SCRIPT = """
import sys
import numpy as np
port, pid, data_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
from symgrad.train import distributed
distributed.initialize(f"127.0.0.1:{port}", 2, pid)
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from symgrad.data import TransitionSource, open_dataset
from symgrad.train.state import batch_indices
source = TransitionSource(open_dataset(data_file), np.arange(6))
idx = batch_indices(0, 1, 2, len(source), 8)
x, y = source.get(idx[distributed.local_slice(8)])  # this host's share only
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
xg, yg = distributed.global_batch(sharding, (x, y), 8)
full = [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in (xg, yg)]
np.savez(f"{out}/host{pid}.npz", x=x, y=y, global_x=full[0], global_y=full[1], idx=idx)
"""


def test_two_hosts_shards_of_a_global_batch_equal_one_hosts_batch(tmp_path, cache_dir, data_file):
    """Each of two processes (``jax.distributed`` on localhost) reads only its half of a
    global batch; together, and as the assembled global array, they are one host's batch."""
    from symgrad.data import TransitionSource, open_dataset
    from symgrad.train.state import batch_indices

    script = tmp_path / "shards.py"
    script.write_text(_SHARD_SCRIPT)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(data_file), str(tmp_path)],
                              env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr
    hosts = [np.load(tmp_path / f"host{i}.npz") for i in range(2)]
    source = TransitionSource(open_dataset(data_file), np.arange(6))
    idx = batch_indices(0, 1, 2, len(source), 8)
    x, y = source.get(idx)
    np.testing.assert_array_equal(hosts[0]["idx"], idx)
    assert hosts[0]["x"].shape[0] == hosts[1]["x"].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([h["x"] for h in hosts]), x)
    np.testing.assert_array_equal(np.concatenate([h["y"] for h in hosts]), y)
    for h in hosts:
        np.testing.assert_array_equal(h["global_x"], x)
        np.testing.assert_array_equal(h["global_y"], y)
