"""``symgrad sweep``: run a whole study (train, then diagnostics) locally or on SLURM."""

HELP = "run a study: a grid of training runs and their diagnostics, locally or on SLURM"
DESCRIPTION = (
    "Expand a sweep file (TOML, see experiments/sweeps/) into jobs: one training run per "
    "model x preset x seed, then each diagnostic for each group on each run. Finished jobs "
    "(whose output exists) are skipped, so a sweep can be re-run after an interruption."
)


def register(parser) -> None:
    parser.add_argument("sweep_file", help="sweep definition (TOML)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    mode.add_argument("--slurm", metavar="DIR",
                      help="write sbatch scripts and DIR/submit.sh instead of running (default: run here, one "
                           "job after another)")
    parser.add_argument("--submit", action="store_true", help="with --slurm: also run DIR/submit.sh (needs sbatch)")


def run(args) -> int:
    import shutil
    import subprocess

    from symgrad.errors import SymgradError
    from symgrad.sweep import expand, load_sweep, run_local, write_slurm

    sweep = load_sweep(args.sweep_file)
    jobs = expand(sweep)
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
    return run_local(jobs)
