"""``symgrad info``: what a data file holds, or the size and configuration of a model."""

HELP = "describe a data file (shape, family, times, gamma, ranges, provenance) or a model preset"
DESCRIPTION = (
    "'symgrad info FILE' prints what a data file (or a directory/glob of shards) holds; with "
    "--check it reads every trajectory and checks that values are finite, density and pressure "
    "positive, and E = p/(gamma-1) + rho |u|^2 / 2. 'symgrad info --model NAME --preset P' prints "
    "the parameter count and configuration of a surrogate."
)

ENERGY_RTOL = 1e-4  # |E - E(p)| / max(1, |E|) allowed by --check (float32 storage is ~1e-7)


def register(parser) -> None:
    parser.add_argument("paths", nargs="*", metavar="FILE", help="data file(s), a directory or a glob")
    parser.add_argument("--check", action="store_true",
                        help="read all trajectories: finite values, rho > 0, p > 0, E consistent with p")
    parser.add_argument("--samples", type=int, default=8, help="trajectories used for the channel ranges")
    parser.add_argument("--model", metavar="NAME", help="describe a model (unet, vit, gcnn) instead of a file")
    parser.add_argument("--preset", default="tiny", help="model preset (tiny, small, paper)")
    parser.add_argument("--resolution", type=int, default=128, help="grid of the model")


def _describe_model(args) -> int:
    import json

    import jax

    from symgrad.errors import SymgradError

    try:
        from symgrad.models import build, parameter_count
    except ImportError as exc:
        raise SymgradError(f"the models package is not available ({exc})") from None
    model = build(args.model, args.preset, args.resolution)
    shapes = jax.eval_shape(model.init, jax.random.key(0))  # no parameters are materialised
    print(f"model:      {model.name} (preset {model.preset}) at {args.resolution}x{args.resolution}")
    print(f"parameters: {parameter_count(shapes):,}")
    print("config:     " + json.dumps(model.config, sort_keys=True, default=str))
    return 0


def _fmt_times(times) -> str:
    import numpy as np

    if times.size == 0:
        return "none"
    spacing = np.diff(times)
    kind = "equispaced" if times.size < 3 or np.allclose(spacing, spacing[0], rtol=1e-6) else "non-uniform"
    return f"{times.size} from {times[0]:g} to {times[-1]:g} ({kind})"


def _describe_file(args) -> int:
    import json

    import numpy as np

    from symgrad.data import open_dataset, schema
    from symgrad.data.reader import decode_json_attr
    from symgrad.errors import SymgradError

    dataset = open_dataset(args.paths)
    with dataset:
        paths = dataset.paths
        attrs = dataset.attrs[0]
        nx, ny = dataset.shape
        if len(paths) == 1:
            print(f"file:        {paths[0]}")
        else:
            print(f"files:       {len(paths)}, {paths[0]} ... {paths[-1]} "
                  f"({', '.join(str(c) for c in dataset.sample_counts)} trajectories)")
        print(f"layout:      data (sample, time, channel, x, y) = "
              f"({dataset.n_samples}, {dataset.n_times}, 5, {nx}, {ny}), channels {', '.join(schema.CHANNELS)}")
        print(f"family:      {dataset.family}")
        print(f"trajectories: {dataset.n_samples}")
        print(f"resolution:  {nx}x{ny}")
        note = " [no time coordinate in the file: equispaced on [0, 1] assumed]" if dataset.times_assumed else ""
        print(f"times:       {_fmt_times(dataset.times)}{note}")
        print(f"gamma:       {dataset.gamma:g}" + ("" if "gamma" in attrs else " (default; the file has no gamma attribute)"))
        for key in ("seed", "t_final", "chunk_size", "float64", "on_failure"):
            if key in attrs:
                print(f"{key + ':':<12} {attrs[key]}")
        if "solver" in attrs:
            print(f"solver:      {json.dumps(decode_json_attr(attrs['solver']), sort_keys=True)}")
        if "initial_config" in attrs:
            print(f"initial:     {json.dumps(decode_json_attr(attrs['initial_config']), sort_keys=True)}")
        resampled = decode_json_attr(attrs.get("resampled_trajectories"), [])
        if resampled:
            print(f"resampled:   {len(resampled)} trajectories had their initial state redrawn: {resampled[:10]}")

        n_range = max(1, min(args.samples, dataset.n_samples))
        picks = np.unique(np.linspace(0, dataset.n_samples - 1, n_range).round().astype(int))
        block = dataset.read_channels(picks)
        print(f"ranges on {picks.size} trajectories (samples {', '.join(map(str, picks[:8]))}"
              f"{', ...' if picks.size > 8 else ''}), all times:")
        for c, name in enumerate(schema.CHANNELS):
            values = block[:, :, c]
            print(f"  {name:<4} min {values.min(): .6g}  max {values.max(): .6g}  mean {values.mean(): .6g}")

        for key in ("created", "git_commit", "host", "command"):
            if key in attrs:
                print(f"{key + ':':<12} {attrs[key]}")
        if "package_versions" in attrs:
            versions = decode_json_attr(attrs["package_versions"], {})
            if isinstance(versions, dict):
                print("versions:    " + ", ".join(f"{k} {v}" for k, v in versions.items() if v != "not installed"))

        if args.check:
            problems = _check(dataset, args)
            if problems:
                raise SymgradError(f"{len(problems)} check(s) failed for {paths[0]}"
                                   f"{' and its shards' if len(paths) > 1 else ''}: " + "; ".join(problems))
            print(f"check:       OK ({dataset.n_samples} trajectories: finite, rho > 0, p > 0, "
                  f"E consistent with p to {ENERGY_RTOL:g})")
    return 0


def _check(dataset, args) -> list[str]:
    import numpy as np
    from tqdm.auto import tqdm

    from symgrad.data import schema

    problems = []
    worst_energy = (0.0, None)
    bad_rho = bad_p = 0
    first_rho = first_p = None
    step = 4
    # disable=None: a bar on a terminal only, not in logs
    for start in tqdm(range(0, dataset.n_samples, step), desc="check", unit="block", leave=False, disable=None):
        idx = np.arange(start, min(start + step, dataset.n_samples))
        block = dataset.read_channels(idx)  # raises on NaN/Inf, naming file, sample, time, cell
        rho_bad = block[:, :, 0] <= 0
        p_bad = block[:, :, 3] <= 0
        if rho_bad.any():
            bad_rho += int(rho_bad.any(axis=(1, 2, 3)).sum())
            first_rho = first_rho or tuple(int(v) for v in np.argwhere(rho_bad)[0]) + (start,)
        if p_bad.any():
            bad_p += int(p_bad.any(axis=(1, 2, 3)).sum())
            first_p = first_p or tuple(int(v) for v in np.argwhere(p_bad)[0]) + (start,)
        mismatch = schema.energy_mismatch(block, dataset.gamma)
        k = np.unravel_index(np.argmax(mismatch), mismatch.shape)
        if mismatch[k] > worst_energy[0]:
            worst_energy = (float(mismatch[k]), (start + int(k[0]), int(k[1]), int(k[2]), int(k[3])))

    def where(first):
        s, t, i, j, start = first
        return f"first at sample {start + s}, time index {t}, cell ({i}, {j})"

    if bad_rho:
        problems.append(f"{bad_rho} trajectories have density <= 0 ({where(first_rho)})")
    if bad_p:
        problems.append(f"{bad_p} trajectories have pressure <= 0 ({where(first_p)})")
    if worst_energy[0] > ENERGY_RTOL:
        s, t, i, j = worst_energy[1]
        problems.append(
            f"the E channel differs from p/(gamma-1) + rho|u|^2/2 with gamma={dataset.gamma:g} by up to "
            f"{worst_energy[0]:.3g} (relative; sample {s}, time index {t}, cell ({i}, {j})): the 5th channel "
            f"is not the total energy, or gamma is wrong"
        )
    else:
        print(f"energy:      E matches p/(gamma-1) + rho|u|^2/2 to {worst_energy[0]:.2g} (relative)")
    return problems


def run(args) -> int:
    from symgrad.errors import SymgradError

    if args.model:
        if args.paths:
            raise SymgradError("give either data files or --model, not both")
        return _describe_model(args)
    if not args.paths:
        raise SymgradError("nothing to describe: give a data file (symgrad info FILE.nc) or --model NAME")
    return _describe_file(args)
