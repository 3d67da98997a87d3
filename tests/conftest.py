"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Enable float64 for one test only (exactness checks), then restore the default."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def random_euler_states(n, n_times, res, seed):
    """Physical conservative states ``(n, n_times, res, res, 4)`` float32 (not a solution)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.5, 1.5, (n, n_times, res, res, 1))
    m = rng.uniform(-0.3, 0.3, (n, n_times, res, res, 2))
    p = rng.uniform(0.5, 1.5, (n, n_times, res, res, 1))
    e = p / 0.4 + 0.5 * np.sum(m**2, axis=-1, keepdims=True) / rho
    return np.concatenate([rho, m, e], axis=-1).astype(np.float32)


TINY_RUN_TIMES = 3


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory):
    """One epoch of a tiny UNet on 10 random 8x8 trajectories: ``(run_dir, data_file)``.

    Shared read-only by the CLI tests of the diagnostics (they never write into it)."""
    import numpy as np

    from symgrad import data, train

    root = tmp_path_factory.mktemp("tiny-run")
    data_file = data.write_dataset(root / "data.nc", random_euler_states(10, TINY_RUN_TIMES, 8, 0),
                                   np.linspace(0.0, 0.1, TINY_RUN_TIMES), gamma=1.4)
    config = train.TrainConfig(
        model="unet", preset="tiny", data=(str(data_file),), epochs=1, batch_size=4,
        eval_batch_size=4, rollout_trajectories=0, progress=False, split_fractions=(0.6, 0.2, 0.2),
    )
    train.train(config, root / "run", log=lambda *a, **k: None)
    return root / "run", data_file


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Release the compiled programs of each test file once it has run. The whole suite runs in
    one process, and each cached CPU program holds about 30 memory mappings: without this the
    process reached ``vm.max_map_count`` (65,530) near test_spectrum, and an XLA compile then
    crashed (CI of stop 29). Tests that need a program again within a file still share it."""
    yield
    from symgrad.sweep import release_compiled_programs

    release_compiled_programs()
