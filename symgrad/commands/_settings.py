"""Flags from the fields of a diagnostic's config (``symgrad.diagnostics.config``).

Each field made with ``config._setting`` is a flag ``--field-name`` (or its ``flag``), with
the field's help and its default shown from the field. A flag not given stays absent
(``argparse.SUPPRESS``), so the config's own default, or the one the command fills in
from the run (``fill``), applies. A ``SettingError`` (of a config or of ``symgrad.inputs``)
is shown with the flags' names (``shown_as_flags``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

# The type argparse converts a flag with, by the field's annotation (also symgrad train's).
FIELD_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str,
               "tuple[str, ...]": str, "tuple[int, ...]": int}


def flag_of(cls, name: str) -> str:
    """The command-line spelling of field ``name`` of ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name and f.metadata.get("flag"):
            return f.metadata["flag"]
    return "--" + name.replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser, cls, *, skip=()) -> None:
    """One flag per setting of ``cls`` (``skip`` those the command offers otherwise)."""
    from symgrad.diagnostics.config import setting_fields

    for f in setting_fields(cls):
        if f.name in skip:
            continue
        meta = {k: v for k, v in f.metadata.items() if k not in ("help", "flag", "shown")}
        shown = f.metadata.get("shown") or ("none" if f.default is None else f.default)
        parser.add_argument(flag_of(cls, f.name), dest=f.name, type=FIELD_TYPES[f.type], default=argparse.SUPPRESS,
                            help=f"{f.metadata['help']} (default: {str(shown).replace('%', '%%')})", **meta)


def settings_from_args(cls, args, **fill):
    """``cls`` from the flags given; ``fill`` supplies a field's default where no flag was
    given (the run's weight decay for ``damping``). Checked once, in ``cls.__post_init__``."""
    from symgrad.diagnostics.config import setting_fields

    values = dict(fill)
    values.update({f.name: getattr(args, f.name) for f in setting_fields(cls) if hasattr(args, f.name)})
    with shown_as_flags(cls):
        return cls(**values)


# The parameters of ``symgrad.inputs`` as the command line spells them.
INPUT_FLAGS = {"run_dir": "--run", "data": "--data", "step": "--step", "n_samples": "--samples",
               "time_index": "--time"}


@contextlib.contextmanager
def shown_as_flags(cls=None):
    """A ``SettingError`` inside (of ``symgrad.inputs``, or of the config class ``cls``) names
    the flags, not the fields and parameters."""
    from symgrad.errors import SettingError, SymgradError

    def name_of(name):
        if name in INPUT_FLAGS:
            return INPUT_FLAGS[name]
        return flag_of(cls, name) if cls is not None else "--" + name.replace("_", "-")

    try:
        yield
    except SettingError as exc:
        raise SymgradError(exc.message(name_of)) from None
