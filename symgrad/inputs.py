"""A trained run's held-out data, for the diagnostics: the run, its data selection, its test
transitions and the provenance of a result.

``load(run_dir, data=None, step=None) -> RunInputs`` loads the run (its latest checkpoint
unless ``step``) and opens its data, or other ``data`` files; ``test_transitions(inputs,
n_samples, time_index)`` gives the first held-out transitions ``T -> T+1``; ``provenance``
the attributes that tie a result to them. The commands and the benchmarks call these; the
errors name these parameters (``run_dir``, ``data``, ``n_samples``, ``time_index``), which
the command line shows as its flags (``symgrad.commands._arguments.INPUT_FLAGS``).

Which samples are held out: the run's test split indexes the concatenation of its training
files. Reading those files, the split applies unchanged; reading one of them, the split is
mapped into that file; a file the run never saw is held out entirely. Training
trajectories are never evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from symgrad import names
from symgrad.errors import SettingError, SymgradError


class RunInputs(NamedTuple):
    trained: object  # symgrad.train.TrainedModel
    run_dir: Path
    data_paths: list[str]
    dataset: object  # symgrad.data.TrajectoryDataset


def resolved(paths) -> list[str]:
    return [str(Path(p).expanduser().resolve()) for p in paths]


def load(run_dir, data=None, step: int | None = None) -> RunInputs:
    """Load the run in ``run_dir`` (latest checkpoint unless ``step``) and open its data or ``data``."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise SettingError("{run_dir} " + f"{run_dir} is a file; pass the run directory (the --out of 'symgrad train')")
    if not run_dir.is_dir():
        raise SettingError("{run_dir} " + f"{run_dir} does not exist; pass the --out directory of 'symgrad train'")
    from symgrad.data import open_dataset
    from symgrad.train import load_run

    try:
        trained = load_run(run_dir) if step is None else load_run(run_dir, step=step)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SymgradError(
            f"cannot load a checkpoint from {run_dir} ({type(exc).__name__}: {first}); "
            "pass a run directory written by 'symgrad train' that holds a checkpoint"
        ) from None

    data_paths = list(data) if data else list(trained.info.data_paths)
    if not data_paths:
        raise SettingError("the run does not record its data files; pass {data} FILE.nc")
    for p in data_paths:
        if not Path(p).exists():
            raise SettingError("{data} " + f"file {p} does not exist; pass an existing data file (netCDF, or The "
                               "Well's HDF5)")
    # the run's coarsening (TrainConfig.coarsen, config.json) applies to any data it is measured on
    dataset = open_dataset(data_paths, coarsen=int(trained.config.get("coarsen", 1)))
    shape = tuple(int(n) for n in np.atleast_1d(dataset.shape))
    if len(set(shape)) != 1:
        raise SettingError("{data} " + f"{data_paths[0]} holds a {'x'.join(map(str, shape))} grid; the diagnostics "
                           "act with the square's symmetries: pass data on a square grid")
    model_resolution = trained.model.config.get("resolution")
    if model_resolution is not None and int(model_resolution) != int(dataset.resolution):
        raise SettingError(
            f"the model was built for {model_resolution}x{model_resolution} states but {data_paths[0]} "
            f"holds {dataset.resolution}x{dataset.resolution}; pass {{data}} at the model's resolution"
        )
    return RunInputs(trained, run_dir, data_paths, dataset)


def default_transition(inputs: RunInputs, group: str | None) -> int:
    """The transition a diagnostic of ``group`` measures by default (``names.default_transition``)."""
    return names.default_transition(group, inputs.dataset.n_times, inputs.trained.info.time_indices)


def check_transition(time_index: int, dataset) -> None:
    if not 0 <= time_index <= dataset.n_times - 2:
        raise SettingError(
            "{time_index} " + f"{time_index} is not a transition of data with {dataset.n_times} times; "
            f"choose 0..{dataset.n_times - 2}"
        )


def held_out_samples(inputs: RunInputs):
    """Trajectory indices in the dataset to evaluate, and a phrase saying where they come
    from (the module docstring says which)."""
    from symgrad.data import open_dataset

    info, data_paths, dataset = inputs.trained.info, inputs.data_paths, inputs.dataset
    run_paths = resolved(info.data_paths)
    test = np.asarray(info.split.get("test", []), dtype=np.int64)
    ours = resolved(data_paths)
    if info.data_digests:
        # The run's files are recognised by their contents (run.json holds their SHA-256): a
        # renamed copy of a training file is no held-out data, and a changed file no test data.
        from symgrad.train.run import changed_data, data_digests

        files = resolved(dataset.paths)
        digests = data_digests(files)
        recorded = list(info.data_digests)
        if set(files) & set(recorded) or set(ours) & set(run_paths):
            changed = changed_data(info.data_digests, digests) if len(files) == len(recorded) else None
            same_path_changed = [p for p in files if p in info.data_digests and digests[p] != info.data_digests[p]]
            if changed or same_path_changed:
                why = changed or f"{same_path_changed[0]} has changed since the run was trained on it"
                raise SettingError(
                    why.replace("{", "{{").replace("}", "}}") + "; the run's test split no longer names held-out "
                    "trajectories: pass as {data} the data the run was trained on, or a file it never saw")
        by_content = {d: p for p, d in info.data_digests.items()}
        ours = [by_content.get(digests[p], p) for p in files]
        run_paths = recorded
    if set(ours) & set(run_paths) and test.size == 0:
        raise SettingError("the run has no test trajectories (its split fractions leave none); "
                           "pass a held-out data file as {data}")
    if run_paths and ours == run_paths:
        return test, "test split of the run"
    if run_paths and all(p in run_paths for p in ours):
        # some of the run's files (one file; The Well's test/ directory): its test split,
        # mapped into them in the order given
        where, offset = {}, 0
        for p in run_paths:
            n = open_dataset([p]).n_samples
            where[p] = (offset, n)
            offset += n
        parts, base = [], 0
        for p in ours:
            start, n = where[p]
            parts.append(test[(test >= start) & (test < start + n)] - start + base)
            base += n
        local = np.concatenate(parts)
        if local.size == 0:
            raise SettingError(f"none of the run's test trajectories lies in {', '.join(map(str, data_paths))}; "
                               "pass all of the run's data files as {data} (or none)")
        return local, f"test split of the run, restricted to {'this file' if len(ours) == 1 else 'these files'}"
    if set(ours) & set(run_paths):
        raise SettingError("{data} mixes files the run was trained on with others; pass exactly the run's data "
                           "files, one of them, or only held-out files")
    return np.arange(dataset.n_samples), "all trajectories of a data file the run was not trained on"


def test_samples(inputs: RunInputs, n_samples: int | None):
    """The first ``n_samples`` held-out trajectories (all when None): ``(samples, source)``;
    asking for more than there are is an error, never a silent cap."""
    if n_samples is not None and n_samples < 1:
        raise SettingError("{n_samples} must be >= 1, got " + str(n_samples))
    samples, source = held_out_samples(inputs)
    if n_samples is not None and len(samples) < n_samples:
        raise SettingError("{n_samples} " + f"{n_samples} but only {len(samples)} test trajectories are available; "
                           "ask for fewer or pass more data")
    return np.asarray(samples if n_samples is None else samples[:n_samples]), source


def test_transitions(inputs: RunInputs, n_samples: int | None, time_index: int):
    """The first ``n_samples`` held-out transitions ``T -> T+1``: ``(samples, source, x, y)`` (numpy)."""
    check_transition(time_index, inputs.dataset)
    samples, source = test_samples(inputs, n_samples)
    states = np.asarray(inputs.dataset.states(samples, [time_index, time_index + 1]))
    return samples, source, states[:, 0], states[:, 1]


def time_step(inputs: RunInputs, time_index: int) -> float:
    """The data's time between the states of the transition ``time_index -> time_index + 1``:
    the step the run's one-step model makes."""
    check_transition(time_index, inputs.dataset)
    times = np.asarray(inputs.dataset.times, dtype=np.float64)
    return float(times[time_index + 1] - times[time_index])


def group(inputs: RunInputs, name: str, time_index: int, *, stride: int = 1,
          factors=names.DEFAULT_SCALE_FACTORS, shifts=names.DEFAULT_BOOST_SHIFTS):
    """The named group (``symgrad.groups.named_group``) for this run's data: its resolution,
    and for boosts its time step at the transition measured (a boost is exact on the grid
    when it moves the flow whole cells in one step)."""
    from symgrad.groups import named_group

    return named_group(name, inputs.dataset.resolution, stride=stride, factors=factors,
                       time_step=time_step(inputs, time_index), shifts=shifts)


def recorded_solver(inputs: RunInputs):
    """The data file's ``solver`` attribute (symgrad's Euler settings as JSON), or None for
    files that do not record the solver that made them (PDEGym's, The Well's)."""
    return inputs.dataset.attrs[0].get("solver")


def solver_settings(inputs: RunInputs):
    """The ``EulerConfig`` that made the data (the file's ``solver`` attribute); the defaults
    with the data's gamma for files without one (PDEGym's)."""
    import json

    from symgrad.euler import EulerConfig

    recorded = recorded_solver(inputs)
    if recorded is None:
        return EulerConfig(gamma=float(inputs.dataset.gamma))
    try:
        return EulerConfig.from_dict(json.loads(str(recorded)))
    except (ValueError, TypeError):
        raise SymgradError(f"{inputs.data_paths[0]}: its solver attribute {recorded!r} is not the JSON of "
                           "symgrad's Euler settings; regenerate the data") from None


def data_defect(inputs: RunInputs, grp, x, time_index: int):
    """For a boost group, the data's own defect on the test states ``x``
    (``symgrad.diagnostics.boosts.data_defect``, with the data's solver and time step and the
    run's SMSE scales); None for other groups."""
    from symgrad.diagnostics.boosts import boost_axis, data_defect as defect

    if boost_axis(grp) is None:
        return None
    return defect(grp, x, np.asarray(inputs.trained.sigma), time_step(inputs, time_index), solver_settings(inputs))


def boost_provenance(inputs: RunInputs, grp) -> dict:
    """For a boost group, where its time step and the floor's solver came from (result
    attributes); empty for other groups. A file without a time coordinate has its times
    assumed equispaced on [0, 1] (PDEGym's convention), so its boost speeds rest on that
    assumption; a file without a ``solver`` attribute (PDEGym's, The Well's) has its floor
    computed with symgrad's solver at its default settings, not with the solver that made it.
    Both are said on stderr too."""
    import sys

    from symgrad.diagnostics.boosts import boost_axis

    if boost_axis(grp) is None:
        return {}
    assumed = bool(getattr(inputs.dataset, "times_assumed", False))
    recorded = recorded_solver(inputs) is not None
    attrs = {
        "time_step_source": ("assumed: the file has no time coordinate, times equispaced on [0, 1]"
                             if assumed else "the data's time coordinate"),
        "data_defect_solver": ("the data's own solver settings (its solver attribute)" if recorded else
                               "symgrad's Euler solver at its default settings: the file does not record "
                               "the solver that made it, so the floor is an estimate of its defect"),
    }
    if assumed:
        print(f"symgrad: warning: {inputs.data_paths[0]} has no time coordinate; the boost speeds assume "
              "its times equispaced on [0, 1]", file=sys.stderr)
    if not recorded:
        print(f"symgrad: warning: {inputs.data_paths[0]} does not record its solver; the boost floor is "
              "symgrad's solver's defect at its default settings", file=sys.stderr)
    return attrs


def provenance(inputs: RunInputs, time_index: int, sample_source: str, **extra) -> dict:
    """The provenance of a diagnostic result: the run it measured (model, preset, seed, family:
    what ``symgrad merge`` stacks results by), its checkpoint, data and samples."""
    from symgrad.io import provenance as base

    trained = inputs.trained
    return base(
        trained.config,
        run_dir=str(Path(inputs.run_dir).resolve()),
        checkpoint_step=int(trained.step) if trained.step is not None else -1,
        data_files=resolved(inputs.data_paths),
        time_index=int(time_index),
        sample_source=sample_source,
        model=trained.model.name,
        preset=trained.model.preset,
        seed=int(trained.config.get("seed", 0)),
        family=inputs.dataset.family,
        sigma=[float(s) for s in np.asarray(trained.sigma)],
        **extra,
    )
