"""``symgrad sweep``: run a whole study (generate, train, then diagnostics) locally or on SLURM."""

HELP = "run a study: its data, a grid of training runs and their diagnostics, locally or on SLURM"
DESCRIPTION = (
    "Expand a sweep file (TOML, see experiments/sweeps/ and docs/sweeps.md) into jobs: the "
    "data's generation if the file has a [generate] table, one training run per model x preset "
    "x seed, then each diagnostic for each group on each run, the merged results and the report. "
    "Finished jobs (whose output exists) are skipped, so a sweep can be re-run after an "
    "interruption. 'make demo' is the sweep experiments/sweeps/demo.toml."
)


def register(parser) -> None:
    parser.add_argument("sweep_file", help="sweep definition (TOML)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: the sweep file's own out)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    mode.add_argument("--slurm", metavar="DIR",
                      help="write sbatch scripts and DIR/submit.sh instead of running (default: run here, one "
                           "job after another)")
    mode.add_argument("--in-process", action="store_true",
                      help="run the jobs here in this process, not one process each: one JAX start-up, "
                           "faster for small sweeps such as the demo")
    parser.add_argument("--submit", action="store_true", help="with --slurm: also run DIR/submit.sh (needs sbatch)")


def execute(args) -> int:
    import shutil
    import subprocess

    from symgrad.errors import SymgradError
    from symgrad.sweep import expand, load_sweep, run_local, use_compilation_cache, validate, write_slurm

    sweep = load_sweep(args.sweep_file, out=args.out)
    jobs = expand(sweep)
    validate(sweep, jobs, args.sweep_file)  # every job checked as its command will, before any runs
    if args.dry_run:
        for job in jobs:
            print(job.command())
        return 0
    if args.slurm:
        submit = write_slurm(jobs, sweep, args.slurm)
        print(f"wrote {len(jobs)} sbatch scripts and {submit}")
        if args.submit:
            if shutil.which("sbatch") is None:
                raise SymgradError("sbatch is not on PATH; run the scripts on a SLURM login node")
            return subprocess.call(["bash", str(submit)])
        return 0
    if args.submit:
        raise SymgradError("--submit needs --slurm DIR")
    if sweep.compilation_cache:
        use_compilation_cache(sweep.compilation_cache)  # before any job starts JAX
    rc = run_local(jobs, in_process=args.in_process)
    report = next((job for job in jobs if job.kind == "report"), None)
    if rc == 0 and report is not None:
        print(f"results in {sweep.out}/results and {sweep.out}/study; figures and report in {sweep.out}/report "
              f"(open {sweep.out}/report/report.html)")
    return rc
