"""``symgrad info``: what a data file holds, or the size and configuration of a model."""

HELP = "describe a data file (shape, family, times, gamma, ranges, provenance) or a model preset"
DESCRIPTION = (
    "'symgrad info FILE' prints what a data file (netCDF, or The Well's HDF5; or a directory/glob "
    "of them) holds; with "
    "--check it reads every trajectory and checks that values are finite, density and pressure "
    "positive, and E = p/(gamma-1) + rho |u|^2 / 2. 'symgrad info --model NAME --preset P' prints "
    "the parameter count and configuration of a surrogate."
)

from symgrad import names


def register(parser) -> None:
    parser.add_argument("paths", nargs="*", metavar="FILE", help="data file(s), a directory or a glob")
    parser.add_argument("--check", action="store_true",
                        help="read all trajectories: finite values, rho > 0, p > 0, E consistent with p")
    parser.add_argument("--range-trajectories", type=int, default=8, metavar="K",
                        help="trajectories read (spread evenly) for the channel ranges")
    parser.add_argument("--model", choices=names.MODELS, default=None,
                        help="architecture to describe instead of a file (default: describe the file)")
    parser.add_argument("--preset", choices=names.PRESETS, default="tiny", help="model size")
    parser.add_argument("--resolution", type=int, default=128, help="grid cells per direction of the model")


def _describe_model(args) -> int:
    import json

    import jax

    from symgrad.models import build, parameter_count

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
    import sys

    import numpy as np

    from symgrad.data import open_dataset, schema
    from symgrad.io import decode_attr
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
        layouts = dataset.layouts
        if len(layouts) == 1:
            print(f"layout:      {layouts[0]}")
        else:  # one line per kind of file, with the sizes of the whole
            kinds = dict.fromkeys(layout.split(" (")[0].split(" = ")[0] for layout in layouts)
            print(f"layout:      {' + '.join(kinds)}: (sample, time, x, y) = "
                  f"({dataset.n_samples}, {dataset.n_times}, {nx}, {ny})")
        print(f"family:      {dataset.family}")
        print(f"trajectories: {dataset.n_samples}")
        print(f"resolution:  {nx}x{ny}")
        note = " [no time coordinate in the file: equispaced on [0, 1] assumed]" if dataset.times_assumed else ""
        print(f"times:       {_fmt_times(dataset.times)}{note}")
        gammas = dataset.gammas
        if len(set(gammas)) == 1:
            print(f"gamma:       {gammas[0]:g}" + ("" if "gamma" in attrs else " (default; the file has no gamma attribute)"))
        else:  # The Well: one gas per file
            print("gamma:       " + ", ".join(f"{g:g} ({p.name})" for g, p in zip(gammas, paths)))
        for key in ("seed", "t_final", "chunk_size", "float64", "on_failure"):
            if key in attrs:
                print(f"{key + ':':<12} {attrs[key]}")
        if "solver" in attrs:
            print(f"solver:      {json.dumps(decode_attr(attrs['solver']), sort_keys=True)}")
        if "initial_config" in attrs:
            print(f"initial:     {json.dumps(decode_attr(attrs['initial_config']), sort_keys=True)}")
        resampled = decode_attr(attrs.get("resampled_trajectories"), [])
        if resampled:
            print(f"resampled:   {len(resampled)} trajectories had their initial state redrawn: {resampled[:10]}")

        n_range = max(1, min(args.range_trajectories, dataset.n_samples))
        picks = np.unique(np.linspace(0, dataset.n_samples - 1, n_range).round().astype(int))
        print(f"ranges on {picks.size} trajectories (samples {', '.join(map(str, picks[:8]))}"
              f"{', ...' if picks.size > 8 else ''}), all times:")
        low, high = np.full(5, np.inf), np.full(5, -np.inf)
        total, count = np.zeros(5), 0
        tally = _Tally()
        for idx, t0, block in _blocks(dataset, picks):  # ranges of bad data too
            low = np.minimum(low, block.min(axis=(0, 1, 3, 4)))
            high = np.maximum(high, block.max(axis=(0, 1, 3, 4)))
            total += block.sum(axis=(0, 1, 3, 4), dtype=np.float64)
            count += block.size // 5
            if not args.check:
                tally.add(dataset, idx, t0, block)
        for c, name in enumerate(schema.CHANNELS):
            print(f"  {name:<4} min {low[c]: .6g}  max {high[c]: .6g}  mean {total[c] / count: .6g}")

        problem = tally.first()  # --check lists every problem below
        if problem is not None:
            what, (sample, t, i, j), affected = problem
            print(f"warning: {affected} of the {picks.size} trajectories looked at hold non-physical values "
                  f"({what}, first at sample {sample}, time index {t}, cell ({i}, {j})): reading them "
                  f"for training or a diagnostic will fail; run 'symgrad info --check' to list every problem",
                  file=sys.stderr)
        for key in ("created", "git_commit", "host", "command"):
            if key in attrs:
                print(f"{key + ':':<12} {attrs[key]}")
        if "package_versions" in attrs:
            versions = decode_attr(attrs["package_versions"], {})
            if isinstance(versions, dict):
                print("versions:    " + ", ".join(f"{k} {v}" for k, v in versions.items() if v != "not installed"))

        if args.check:
            problems = _check(dataset, args)
            if problems:
                raise SymgradError(f"{len(problems)} check(s) failed for {paths[0]}"
                                   f"{' and its shards' if len(paths) > 1 else ''}: " + "; ".join(problems))
            print(f"check:       OK ({dataset.n_samples} trajectories: finite, rho > 0, p > 0, "
                  f"E consistent with p to {schema.ENERGY_RTOL:g})")
    return 0


# Values read at once by the ranges and --check: The Well's 512x512 states with 101 times
# are 530 MB per trajectory, so blocks are cut in time as well as in trajectories.
_BLOCK_BYTES = 64 << 20


def _blocks(dataset, samples):
    """``(samples, first time index, channels)`` blocks of at most about ``_BLOCK_BYTES``
    covering every time of ``samples``; unchecked for physics (NaN/Inf still raise)."""
    import numpy as np

    nx, ny = dataset.shape
    per_state = 5 * nx * ny * 4
    n_t = int(max(1, min(dataset.n_times, _BLOCK_BYTES // per_state)))
    n_s = int(max(1, _BLOCK_BYTES // (per_state * dataset.n_times))) if n_t == dataset.n_times else 1
    samples = np.asarray(samples)
    for a in range(0, samples.size, n_s):
        idx = samples[a:a + n_s]
        for t0 in range(0, dataset.n_times, n_t):
            times = np.arange(t0, min(t0 + n_t, dataset.n_times))
            yield idx, t0, dataset.read_channels(idx, times, check_physics=False)


def _gamma_of(dataset, samples):
    """Each sample's gamma (its file's), shaped to broadcast over ``(n, t, nx, ny)``."""
    import numpy as np

    gammas = dataset.gammas
    if len(set(gammas)) == 1:
        return gammas[0]
    files = {p: g for p, g in zip(dataset.paths, gammas)}
    return np.array([files[dataset.locate(int(s))[0]] for s in samples])[:, None, None, None]


class _Tally:
    """Every rule of ``schema.UNPHYSICAL`` over blocks: the trajectories affected, the first
    place (dataset sample, time index, cell) and the worst energy mismatch."""

    def __init__(self):
        from symgrad.data import schema

        self.affected = [set() for _ in schema.UNPHYSICAL]
        self.places: list[tuple | None] = [None] * len(schema.UNPHYSICAL)
        self.worst_energy = 0.0

    def add(self, dataset, samples, t0: int, block) -> None:
        import numpy as np

        from symgrad.data import schema

        gamma = _gamma_of(dataset, samples)
        for r, (_, _, rule) in enumerate(schema.UNPHYSICAL):
            bad = rule(block, gamma)
            if bad.any():
                self.affected[r].update(int(s) for s in samples[bad.reshape(bad.shape[0], -1).any(axis=1)])
                s, t, i, j = (int(v) for v in np.argwhere(bad)[0])
                place = (int(samples[s]), t0 + t, i, j)
                if self.places[r] is None or place < self.places[r]:
                    self.places[r] = place
        self.worst_energy = max(self.worst_energy, float(schema.energy_mismatch(block, gamma).max()))

    def first(self):
        """``(what, place, n affected)`` of the first rule violated, or None."""
        from symgrad.data import schema

        for (_, what, _), affected, place in zip(schema.UNPHYSICAL, self.affected, self.places):
            if affected:
                return what, place, len(affected)
        return None


def _check(dataset, args) -> list[str]:
    """Every trajectory against every rule of ``schema.UNPHYSICAL``: counts and first places."""
    import numpy as np
    from tqdm.auto import tqdm

    from symgrad.data import schema

    tally = _Tally()
    blocks = _blocks(dataset, np.arange(dataset.n_samples))
    # disable=None: a bar on a terminal only, not in logs
    for idx, t0, block in tqdm(blocks, desc="check", unit="block", leave=False, disable=None):
        tally.add(dataset, idx, t0, block)  # NaN/Inf raised in the read, naming file, sample, time and cell

    problems = []
    gammas = ", ".join(f"{g:g}" for g in sorted(set(dataset.gammas)))
    for (channel, what, _), affected, f in zip(schema.UNPHYSICAL, tally.affected, tally.places):
        if affected:
            why = (f", up to {tally.worst_energy:.3g} with gamma={gammas}: the 5th channel is not the total energy, "
                   "or gamma is wrong") if channel == "E" else ""
            problems.append(f"{len(affected)} trajectories have {what} (first at sample {f[0]}, time index {f[1]}, "
                            f"cell ({f[2]}, {f[3]}){why})")
    if not any(a for (channel, _, _), a in zip(schema.UNPHYSICAL, tally.affected) if channel == "E"):
        print(f"energy:      E matches p/(gamma-1) + rho|u|^2/2 to {tally.worst_energy:.2g} (relative)")
    return problems


def execute(args) -> int:
    from symgrad.errors import SymgradError

    if args.model:
        if args.paths:
            raise SymgradError("give either data files or --model, not both")
        return _describe_model(args)
    if not args.paths:
        raise SymgradError("nothing to describe: give a data file (symgrad info FILE.nc) or --model NAME")
    return _describe_file(args)
