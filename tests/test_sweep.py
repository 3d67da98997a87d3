"""Sweep expansion, local execution (with a stand-in executable) and SLURM scripts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from symgrad import cli
from symgrad.errors import EXIT_PREEMPTED, SymgradError
from symgrad.sweep import expand, load_sweep, run_local, write_slurm

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path, body):
    p = tmp_path / "s.toml"
    p.write_text(body)
    return p


BODY = """
[sweep]
out = "{out}"
data = ["a.nc", "b.nc"]
models = ["unet", "vit"]
seeds = [0, 1]
groups = ["d4", "translate-x"]
[train]
epochs = 3
batch_size = 8
[overlap]
samples = 4
"""


def test_expand_orders_training_before_its_diagnostics(tmp_path):
    sweep = load_sweep(_write(tmp_path, BODY.format(out=tmp_path / "o")))
    jobs = expand(sweep)
    trains = [j for j in jobs if j.kind == "train"]
    # 4 runs x (train + 2 diagnostics x 2 groups), one merge per diagnostic and group, the report
    assert len(trains) == 4 and len(jobs) == 4 * (1 + 2 * 2) + 2 * 2 + 1
    merges = [j for j in jobs if j.kind == "merge"]
    assert all(len(m.depends_on) == 4 for m in merges) and jobs[-1].depends_on == tuple(m.name for m in merges)
    assert all(Path(a).is_absolute() for j in jobs for a in j.argv if a.endswith((".nc", "DONE")))
    seen = set()
    for job in jobs:
        assert set(job.depends_on) <= seen  # every dependency comes earlier
        seen.add(job.name)
    t = trains[0]
    assert t.argv[:1] == ("train",) and "--epochs" in t.argv and "--batch-size" in t.argv
    ov = [j for j in jobs if j.kind == "overlap"][0]
    assert ov.argv[ov.argv.index("--samples") + 1] == "4"
    # every diagnostic reads all the data its run was trained on (its test split is drawn over them)
    for job in jobs:
        if job.kind in ("train", "equivariance", "overlap"):
            i = job.argv.index("--data")
            assert job.argv[i + 1:i + 3] == (str(Path("a.nc").absolute()), str(Path("b.nc").absolute())), job.argv
    report = jobs[-1]
    assert report.kind == "report" and report.argv[0] == "report"
    runs = report.argv[report.argv.index("--runs") + 1:report.argv.index("--out")]
    assert runs == tuple(j.argv[j.argv.index("--out") + 1] for j in trains)


def test_options_fill_in_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = BODY.format(out=tmp_path / "o") + '\n[equivariance]\nsamples = 3\n'
    body = body.replace("[train]\n", '[train]\nconfig = "experiments/paper-{model}.toml"\n')
    jobs = expand(load_sweep(_write(tmp_path, body)))
    for job in (j for j in jobs if j.kind == "train"):
        model = job.argv[job.argv.index("--model") + 1]
        assert job.argv[job.argv.index("--config") + 1] == str(tmp_path / "experiments" / f"paper-{model}.toml")
    with pytest.raises(SymgradError, match="can be filled in"):
        expand(load_sweep(_write(tmp_path, body.replace("paper-{model}", "paper-{nope}"))))
    assert len({j.output for j in jobs}) == len(jobs)


def test_shipped_sweeps_parse():
    for path in (REPO / "experiments" / "sweeps").glob("*.toml"):
        assert expand(load_sweep(path))


def test_bad_sweep_files_give_clear_errors(tmp_path):
    with pytest.raises(SymgradError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")
    with pytest.raises(SymgradError, match="not valid TOML"):
        load_sweep(_write(tmp_path, "[sweep\n"))
    with pytest.raises(SymgradError, match="'models'"):
        load_sweep(_write(tmp_path, '[sweep]\ndata=["a"]\n'))


def test_run_local_skips_finished_and_stops_dependants_of_failures(tmp_path):
    sweep = load_sweep(_write(tmp_path, BODY.format(out=tmp_path / "o")))
    jobs = expand(sweep)
    log = tmp_path / "calls.txt"
    # A stand-in for symgrad: records its argv, creates the --out file, fails for vit.
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import sys, pathlib\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "a = sys.argv[1:]\n"
        "if 'vit' in a[a.index('--model') + 1 if '--model' in a else 0] and a[0] == 'train': sys.exit(3)\n"
        "out = pathlib.Path(a[a.index('--out') + 1])\n"
        "out.parent.mkdir(parents=True, exist_ok=True)\n"
        "(out.mkdir() if a[0] in ('train', 'report') else out.write_text('x'))\n"
    )
    messages = []
    rc = run_local(jobs, executable=[sys.executable, str(fake)], echo=messages.append)
    assert rc == 1
    calls = log.read_text().splitlines()
    assert sum(c.startswith("train") for c in calls) == 4
    assert not any(c.startswith(("equivariance", "overlap")) and "vit" in c for c in calls)
    assert sum(c.startswith(("equivariance", "overlap")) for c in calls) == 8
    assert not any(c.startswith(("merge", "report")) for c in calls)  # they need the vit results too
    # Second pass: everything that succeeded is skipped.
    log.unlink()
    run_local(jobs, executable=[sys.executable, str(fake)], echo=messages.append)
    assert all("vit" in c for c in log.read_text().splitlines())


def test_slurm_scripts_have_dependencies(tmp_path):
    sweep = load_sweep(_write(tmp_path, BODY.format(out=tmp_path / "o")))
    submit = write_slurm(expand(sweep), sweep, tmp_path / "slurm")
    text = submit.read_text()
    # 4 training jobs, 4 arrays (the 4 diagnostics of each run), 4 merges, the report
    assert "--dependency=afterok" in text and text.count("sbatch --parsable") == 13
    assert text.count('--array="${todo#,}"') == 4 and "squeue --me" in text
    train_script = next((tmp_path / "slurm").glob("train-*.sbatch")).read_text()
    assert f"srun {sys.executable} -m symgrad train" in train_script and "#SBATCH --signal=TERM" in train_script
    assert f"#SBATCH --chdir={Path.cwd()}" in train_script and "--kill-on-invalid-dep=yes" in train_script


def _run_train_script(tmp_path, train_exit: int):
    """The train job's sbatch script run by bash with stand-ins for srun and scontrol (the
    stand-in srun exits with ``train_exit`` whatever it is asked to run)."""
    sweep = load_sweep(_write(tmp_path, BODY.format(out=tmp_path / "o")))
    jobs = expand(sweep)
    write_slurm(jobs, sweep, tmp_path / "slurm")
    job = next(j for j in jobs if j.kind == "train")
    Path(job.output).parent.mkdir(parents=True)  # the run directory, as train makes it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f"#!/bin/sh\nexit {train_exit}\n")
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.txt'}\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    script = (tmp_path / "slurm" / f"{job.name}.sbatch").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not this job's, if any
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
    rc = subprocess.run(["bash", "-c", script], env=env).returncode
    return rc, Path(job.output).exists(), (tmp_path / "scontrol.txt")


@pytest.mark.parametrize("train_exit", [0, EXIT_PREEMPTED, 2])
def test_slurm_train_job_requeues_when_preempted_and_marks_only_complete_runs_done(tmp_path, train_exit):
    rc, done, scontrol = _run_train_script(tmp_path, train_exit)
    assert done == (train_exit == 0)
    if train_exit == EXIT_PREEMPTED:
        assert rc == 0 and scontrol.read_text().split() == ["requeue", "4242"]
    else:
        assert rc == train_exit and not scontrol.exists()


def test_cli_dry_run_prints_commands(tmp_path, capsys):
    path = _write(tmp_path, BODY.format(out=tmp_path / "o"))
    assert cli.main(["sweep", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 25 and lines[0].startswith("symgrad train --model unet")
    assert lines[-1].startswith("symgrad report ")
