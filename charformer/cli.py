"""Command-line plumbing shared by the scripts: TOML config files that flags override.

Precedence, lowest first: the dataclass defaults, the ``--config`` TOML file, then flags given on the command
line. A TOML file is flat (``key = value`` with the flag names, dashes or underscores); a key that is not an
option is an error naming the file, never silently ignored.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from .errors import CharformerError


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


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv; fill options not given on the command line from ``--config`` (if any), then defaults.

    Every option of `parser` must have ``default=None`` (real defaults are applied by the caller, usually from
    a dataclass) so that "not given" can be told apart from "given".
    """
    args = parser.parse_args(argv)
    config_path = getattr(args, "config", None)
    if config_path:
        known = {a.dest for a in parser._actions}
        for key, value in load_toml(config_path).items():
            if key not in known or key == "config":
                raise CharformerError(f"{config_path}: unknown option {key!r}")
            if getattr(args, key) is None:
                setattr(args, key, value)
    return args


def build_dataclass(cls, args: argparse.Namespace, **overrides):
    """Instantiate dataclass `cls` from the non-None attributes of `args` that are its fields."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    values.update(overrides)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CharformerError(str(e)) from None


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), group: str | None = None) -> None:
    """Add one ``--field-name`` option per field of dataclass `cls` (type from its default), default None. A
    field's ``metadata["help"]``, if any, is its help text. A boolean option given alone means true; a list
    field (``list[int]``, default from a ``default_factory``) takes one or more values."""
    target = parser.add_argument_group(group) if group else parser
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default_factory is MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} (default: {default!r})" if "help" in f.metadata else f"(default: {default})"
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
