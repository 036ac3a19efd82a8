"""Command-line plumbing shared by the scripts: options generated from dataclass fields, and TOML config
files that flags override.

A command line is parsed once, at the script's edge, into typed dataclasses (`build_dataclass`); library code
below never sees the argparse namespace. Each field is one ``--field-name`` option whose help text is the
field's ``metadata["help"]`` (`option`). Precedence, lowest first: the dataclass defaults, the ``--config``
TOML file, then flags given on the command line. A TOML file is flat (``key = value`` with the flag names,
dashes or underscores); a key that is not an option is an error naming the file, never silently ignored.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from .errors import CharformerError


def option(default, help: str, **metadata):
    """A dataclass field whose ``--help`` text is `help` (a sentence, with units); more `metadata` may ride along.
    A list default is copied for every instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML config. Raises CharformerError for a missing file or a syntax error (with position)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CharformerError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise CharformerError(f"{path}: invalid TOML ({e})") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> dict[str, Any]:
    """The options given, by name (``--max-steps 5`` -> ``{"max_steps": 5}``): those on the command line, then
    those of the ``--config`` file (if any) that the command line did not give. Options not given are absent:
    their defaults are applied by the caller, usually from a dataclass (`build_dataclass`), which is why every
    option of `parser` must have ``default=None``. Raises CharformerError for a config key that is no option."""
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    config_path = given.get("config")
    if config_path:
        known = {a.dest for a in parser._actions}
        for key, value in load_toml(config_path).items():
            if key not in known or key == "config":
                raise CharformerError(f"{config_path}: unknown option {key!r}")
            given.setdefault(key, value)
    return given


def given_fields(cls, given: dict[str, Any]) -> dict[str, Any]:
    """The options in `given` (`parse_with_config`) that are fields of dataclass `cls`."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in given.items() if k in names}


def build_dataclass(cls, given: dict[str, Any], **overrides):
    """Instantiate dataclass `cls` from the options `given` that are its fields (the rest keep their
    defaults) and `overrides`. Raises CharformerError for a value the dataclass refuses."""
    try:
        return cls(**{**given_fields(cls, given), **overrides})
    except (TypeError, ValueError) as e:
        raise CharformerError(str(e)) from None


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), group: str | None = None,
                          helps: dict[str, str] | None = None) -> None:
    """Add one ``--field-name`` option per field of dataclass `cls` (type from its default), default None, so
    that a given option can be told from one not given. Help text: the field's ``metadata["help"]``, else
    ``helps[name]``. A boolean option given alone means true; a list field takes one or more values."""
    target = parser.add_argument_group(group) if group else parser
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default_factory is MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help") or (helps or {}).get(f.name, "")
        text = f"{text} (default: {default!r})"
        if isinstance(default, bool):
            target.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=None, metavar="BOOL", help=text)
        elif isinstance(default, list):
            target.add_argument(flag, type=get_args(hints[f.name])[0], nargs="+", default=None, help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(type(default).__name__, _int_or_none)
            target.add_argument(flag, type=kind, default=None, help=text)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)
