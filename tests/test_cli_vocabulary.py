"""One vocabulary on the command line: a flag that two subcommands share means the same thing
in both (one table, flag -> meaning), every default is shown, and choices are listed.

The checks read each subcommand's ``--help`` text, as a user does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re

import pytest

from symgrad.cli import SUBCOMMANDS, build_parser

# What a shared flag means: every subcommand's help for it states this phrase.
MEANINGS = {
    "--help": "show this help message and exit",
    "--out": "output",
    "--overwrite": "replace",
    "--data": "dataset file(s)",
    "--run": "run directory written by 'symgrad train'",
    "--group": "symmetry group",
    "--stride": "translations: shifts 0, K, 2K, ... < resolution",
    "--factors": "scaling factors",
    "--shifts": "boosts: cells the boosted flow moves per time step, c = K dx / dt for the data's resolution and time step",
    "--step": "checkpoint step",
    "--samples": "the first N test trajectories",
    "--time": "use the transition T -> T+1",
    "--damping": "lambda of chi = (lambda I + G)^-1",
    "--precision": "parameters and data are cast",
    "--runs": "run directories of 'symgrad train'",
    "--format": "the format of what is written",
    "--probe-vectors": "random vectors of the spectrum probe",
    "--lanczos-steps": "block Lanczos steps",
    "--seed": "random seed",
    "--model": "architecture",
    "--preset": "model size",
    "--resolution": "grid cells per direction",
    "--times": "stored times, t=0 included",
    "--t-final": "last stored time",
    "--chunk-size": "trajectories per chunk",
    "--limiter": "TVD slope limiter",
    "--reconstruction": "variables the MUSCL reconstruction limits",
    "--rk": "SSP Runge-Kutta stages",
    "--cfl": "Courant number",
    "--float64": "solve in float64",
    "--no-progress": "no progress bar",
}
_OPTION = re.compile(r"^  (-\S+(?:\s\S+)*?)(?:\s{2,}(.*))?$")


def _help_text(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return out.getvalue()


def _entries(text: str) -> dict[str, str]:
    """``--flag -> its help`` from a ``--help`` text (continuation lines joined)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = _OPTION.match(line)
        if match:
            invocations = match.group(1).split(", ")
            current = next((i.split()[0] for i in invocations if i.startswith("--")), invocations[0].split()[0])
            entries[current] = match.group(2) or ""
        elif current and line.startswith(" " * 4) and line.strip():
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return entries


@pytest.fixture(scope="module")
def helps(monkeypatch_module):
    monkeypatch_module.setenv("COLUMNS", "100")
    return {name: _entries(_help_text(name)) for name in SUBCOMMANDS}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_flag_that_two_subcommands_share_means_the_same_in_both(helps):
    where: dict[str, list[str]] = {}
    for command, entries in helps.items():
        for flag in entries:
            where.setdefault(flag, []).append(command)
    shared = {flag: commands for flag, commands in where.items() if len(commands) > 1}
    unexplained = sorted(set(shared) - set(MEANINGS))
    assert not unexplained, f"flags shared without an entry in MEANINGS: {unexplained} ({shared})"
    for flag, commands in shared.items():
        for command in commands:
            assert _flat(MEANINGS[flag]) in _flat(helps[command][flag]), (
                f"symgrad {command} {flag}: {helps[command][flag]!r} does not say {MEANINGS[flag]!r}")
    stale = sorted(set(MEANINGS) - set(shared))
    assert not stale, f"MEANINGS lists flags that no two subcommands share: {stale}"


def _switch(action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction))


def test_every_default_is_shown_one_way_and_choices_are_listed(helps):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
            text = helps[command][flag]
            if _switch(action) or action.required:
                assert "default:" not in text, f"symgrad {command} {flag}: a switch or required flag shows a default"
            else:
                assert re.search(r"\(default: [^)]+\)", text), f"symgrad {command} {flag}: no default shown in {text!r}"
                assert "default: None" not in text and "[" not in text.split("default:")[-1], (
                    f"symgrad {command} {flag}: default shown as {text!r}")
            if action.choices is not None and action.metavar is None:
                continue  # argparse lists them in the invocation
            assert action.choices is None, f"symgrad {command} {flag}: a metavar hides its choices"
    for command in ("equivariance", "overlap"):
        group = next(a for a in sub.choices[command]._actions if "--group" in a.option_strings)
        assert group.choices, f"symgrad {command} --group lists no choices"


def test_default_transition_follows_the_run_time_selection():
    from symgrad.names import default_transition

    assert default_transition("d4", 21, tuple(range(16))) == 0
    assert default_transition("translate-x", 21) == 19  # all stored times: the data's last transition
    assert default_transition("translate-y", 21, tuple(range(16))) == 14  # the study: 14 -> 15, seen in training
