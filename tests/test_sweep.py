"""Sweep expansion, local execution (with a stand-in executable) and SLURM scripts."""

import functools
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


def test_the_overlap_jobs_take_every_gpu_of_their_node(tmp_path):
    body = BODY.format(out=tmp_path / "o") + "[slurm]\ngpus_per_node = 4\n"
    sweep = load_sweep(_write(tmp_path, body))
    write_slurm(expand(sweep), sweep, tmp_path / "slurm")
    overlap = next((tmp_path / "slurm").glob("overlap-*.sbatch")).read_text()
    equivariance = next((tmp_path / "slurm").glob("equivariance-*.sbatch")).read_text()
    assert "#SBATCH --gpus-per-node=4" in overlap and "#SBATCH --ntasks-per-node=1" in overlap
    assert "#SBATCH --gpus-per-node=1" in equivariance


def test_slurm_scripts_have_dependencies(tmp_path):
    sweep = load_sweep(_write(tmp_path, BODY.format(out=tmp_path / "o")))
    submit = write_slurm(expand(sweep), sweep, tmp_path / "slurm")
    text = submit.read_text()
    # 4 training jobs, 8 arrays (the 2 equivariance and the 2 overlap jobs of each run), 4 merges, the report
    assert "--dependency=afterok" in text and text.count("sbatch --parsable") == 17
    assert text.count('--array="${todo#,}"') == 8 and "squeue --me" in text
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


GENERATED = """
[sweep]
data = ["{{out}}/data/d.nc"]
models = ["unet", "vit"]
groups = ["d4", "translate-x"]
compilation_cache = "{{out}}/.jax-cache"
[generate]
family = "CE-RP"
trajectories = 8
t_final = 0.25
[train]
epochs = 3
[train.vit]
epochs = 7
[overlap]
samples = 4
[overlap.translate-x]
stride = 2
[overlap.vit]
samples = 2
"""


def test_a_generate_step_and_options_of_one_model_or_group(tmp_path):
    out = tmp_path / "elsewhere"
    sweep = load_sweep(_write(tmp_path, GENERATED.format()), out=out)  # --out replaces [sweep] out
    data = str(out / "data" / "d.nc")
    assert sweep.out == out and sweep.data == (data,) and sweep.compilation_cache == str(out / ".jax-cache")
    jobs = {j.name: j for j in expand(sweep)}
    generate = jobs["generate"]
    assert list(jobs)[0] == "generate" and generate.output == data and generate.kind == "generate"
    assert generate.argv == ("generate", "--family", "CE-RP", "--trajectories", "8", "--t-final", "0.25",
                             "--out", data)
    assert all(j.depends_on == ("generate",) for j in jobs.values() if j.kind == "train")

    def flag(name, option):
        argv = jobs[name].argv
        return argv[argv.index(option) + 1] if option in argv else None

    assert flag("train-unet-tiny-seed0", "--epochs") == "3" and flag("train-vit-tiny-seed0", "--epochs") == "7"
    assert flag("overlap-d4-unet-tiny-seed0", "--stride") is None
    assert flag("overlap-translate-x-unet-tiny-seed0", "--stride") == "2"
    assert flag("overlap-translate-x-unet-tiny-seed0", "--samples") == "4"
    assert flag("overlap-d4-vit-tiny-seed0", "--samples") == "2"
    assert flag("equivariance-translate-x-vit-tiny-seed0", "--stride") is None  # [overlap.*] only
    # Without [generate] there is no such job and training needs nothing.
    plain = expand(load_sweep(_write(tmp_path, BODY.format(out=tmp_path / "o"))))
    assert plain[0].kind == "train" and not plain[0].depends_on


def test_bad_generate_and_sub_tables_give_clear_errors(tmp_path):
    with pytest.raises(SymgradError, match=r"\[overlap.d8\] does not name a model or a group"):
        load_sweep(_write(tmp_path, GENERATED.format() + "[overlap.d8]\nstride = 2\n"))
    with pytest.raises(SymgradError, match=r"\[train.translate-x\] does not name a model"):
        load_sweep(_write(tmp_path, GENERATED.format() + "[train.translate-x]\nepochs = 2\n"))
    with pytest.raises(SymgradError, match="exactly one file"):
        load_sweep(_write(tmp_path, GENERATED.format().replace('data = ["{out}/data/d.nc"]', 'data = ["a", "b"]')))
    with pytest.raises(SymgradError, match="no 'out'"):
        load_sweep(_write(tmp_path, GENERATED.format().replace("t_final = 0.25", 't_final = 0.25\nout = "x.nc"')))


def test_run_local_in_process_skips_what_is_done(tmp_path, monkeypatch):
    from symgrad import cli as cli_module

    sweep = load_sweep(_write(tmp_path, GENERATED.format()), out=tmp_path / "o")
    jobs = expand(sweep)
    calls = []

    def fake_main(argv):  # a stand-in for every symgrad command: makes its --out
        calls.append(argv[0])
        out = Path(argv[argv.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.mkdir() if argv[0] in ("train", "report") else out.write_text("x")
        return 0

    monkeypatch.setattr(cli_module, "main", fake_main)
    messages = []
    assert run_local(jobs, in_process=True, echo=messages.append) == 0
    assert calls[0] == "generate" and len(calls) == len(jobs)
    assert all(Path(j.output).exists() for j in jobs)  # DONE files of the runs and the report too
    assert any("s so far" in m for m in messages)
    calls.clear()
    assert run_local(jobs, in_process=True, echo=messages.append) == 0 and calls == []  # all done already

    def failing_main(argv):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_module, "main", failing_main)
    Path(jobs[0].output).unlink()
    assert run_local(jobs[:2], in_process=True, echo=messages.append) == 1  # reported, not raised


def test_each_in_process_job_releases_its_compiled_programs(tmp_path, monkeypatch):
    """A job's compiled programs are released when it ends, so that a long in-process sweep
    (the demo) never reaches the process's limit of memory mappings (vm.max_map_count): each
    cached CPU program holds tens of them."""
    import jax
    import jax.numpy as jnp

    from symgrad import cli as cli_module

    def mappings():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    def program(x, i):
        for k in range(5):
            x = jnp.tanh(x @ x.T + i * k)
        return jnp.fft.fft(x).real.sum() + jax.lax.fori_loop(0, 3, lambda j, y: y * 1.01 + i, x).sum()

    kept = []  # as a module's jitted functions, which live as long as the process

    def compiling_main(argv):  # a job that compiles 40 programs and keeps them cached
        for i in range(40):
            kept.append(jax.jit(functools.partial(program, i=i)))
            kept[-1](jnp.ones((16, 16))).block_until_ready()
        mappings_in_job.append(mappings())
        out = Path(argv[argv.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("x")
        return 0

    monkeypatch.setattr(cli_module, "main", compiling_main)
    jobs = expand(load_sweep(_write(tmp_path, GENERATED.format()), out=tmp_path / "o"))[:1]
    jax.clear_caches()
    before, mappings_in_job = mappings(), []
    assert run_local(jobs, in_process=True, echo=lambda *a: None) == 0
    grown = mappings_in_job[0] - before
    assert grown > 400  # the cached programs' mappings (about 25 each) ...
    assert mappings() - before < grown / 5  # ... are gone after the job


def test_compilation_cache_reaches_the_jobs(tmp_path, monkeypatch):
    from symgrad.sweep import use_compilation_cache

    sweep = load_sweep(_write(tmp_path, GENERATED.format()), out=tmp_path / "o")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    import jax

    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        use_compilation_cache(sweep.compilation_cache)
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == sweep.compilation_cache  # inherited by the jobs
        assert jax.config.jax_compilation_cache_dir == sweep.compilation_cache  # and this process's
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    submit = write_slurm(expand(sweep), sweep, tmp_path / "slurm")
    script = (tmp_path / "slurm" / "generate.sbatch").read_text()
    assert f"JAX_COMPILATION_CACHE_DIR:-{sweep.compilation_cache}" in script
    assert "afterok" in submit.read_text() and "#SBATCH --gpus-per-node" in script


def test_report_options_reach_the_report_and_are_checked(tmp_path):
    from symgrad.sweep import validate

    body = GENERATED.format() + '\n[report]\nformat = ["png"]\n'
    sweep = load_sweep(_write(tmp_path, body), out=tmp_path / "o")
    jobs = expand(sweep)
    assert jobs[-1].name == "report" and jobs[-1].argv[-2:] == ("--format", "png")
    validate(sweep, jobs, "s.toml")
    bad = load_sweep(_write(tmp_path, GENERATED.format() + '\n[report]\nformat = ["gif"]\n'), out=tmp_path / "o")
    with pytest.raises(SymgradError, match="job report would fail"):
        validate(bad, expand(bad), "s.toml")
    with pytest.raises(SymgradError, match=r"\[report\] holds options"):
        load_sweep(_write(tmp_path, GENERATED.format() + '\n[report]\nout = "x"\n'))
