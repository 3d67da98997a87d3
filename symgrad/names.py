"""The names and defaults that the command line and the library share, in one jax-free place.

A command lists these as its choices and shows these defaults; the library checks against
the same tuples and uses the same defaults. A new family, model or solver is added here and
where it is implemented, nowhere else.
"""

# data (symgrad.euler, symgrad.data)
FAMILIES: tuple[str, ...] = ("CE-RP", "CE-CRP", "CE-RPUI")
LIMITERS: tuple[str, ...] = ("mc", "minmod")
RECONSTRUCTIONS: tuple[str, ...] = ("primitive", "characteristic")
RK_STAGES: tuple[int, ...] = (2, 3)
ON_FAILURE: tuple[str, ...] = ("error", "resample")
GENERATE_CHUNK_SIZE = 32  # trajectories per chunk of generate/solve

# models and training (symgrad.models, symgrad.train)
MODELS: tuple[str, ...] = ("unet", "vit", "gcnn", "relaxed")
PRESETS: tuple[str, ...] = ("tiny", "small", "paper")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")

# groups and diagnostics (symgrad.groups, symgrad.diagnostics)
GROUPS: tuple[str, ...] = ("d4", "translate-x", "translate-y", "scale", "boost-x", "boost-y")
DEFAULT_SCALE_FACTORS: tuple[float, ...] = (0.5, 0.8, 1.0, 1.25, 2.0)
DEFAULT_BOOST_SHIFTS: tuple[int, ...] = (-2, -1, 0, 1, 2)  # cells per time step
DIAGNOSTICS: tuple[str, ...] = ("equivariance", "overlap", "spectrum")


def default_transition(group: str | None, n_times: int, time_indices=()) -> int:
    """The transition ``T -> T+1`` a diagnostic measures when ``--time`` is not given, as in
    the study: ``T = 0`` for D4, scaling, boosts and the spectrum, the last transition the run was
    trained on (the latest states seen in training) for translations: the one ending at the
    run's last selected time (``time_indices``), or at the data's last time."""
    if group is None or not group.startswith("translate"):
        return 0
    return int(time_indices[-1]) - 1 if len(time_indices) else n_times - 2


DEFAULT_TIME_HELP = "(default: 0; for translations the last transition the run was trained on, as in the study)"
EVAL_CHUNK = 64  # model evaluations per compiled call of the equivariance diagnostic
METRICS: tuple[str, ...] = ("chi", "euclidean", "both")
SOLVERS: tuple[str, ...] = ("block", "cg", "dense")
DEFAULT_SOLVER = "block"
PRECISIONS: tuple[str, ...] = ("float64", "float32")
DEFAULT_RTOL = 1e-6
DEFAULT_MAX_ITERATIONS = 10_000
DEFAULT_OVERLAP_SAMPLES = 64  # test trajectories of an overlap or spectrum computation
DEFAULT_GRAD_CHUNK = 8
DEFAULT_PROBE_VECTORS = 8
DEFAULT_PROBE_STEPS = 24
PRECISION_HELP = ("arithmetic of the model, its gradients and solves: parameters and data are cast "
                  "(float64 reaches rtol 1e-6 at small lambda)")

# figures (symgrad.plots)
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
DEFAULT_FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf")
