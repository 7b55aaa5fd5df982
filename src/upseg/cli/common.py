"""What several sub-commands share: argument types, model flags, flags derived from
TrainConfig, and the markdown table they print."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence

from upseg.engine.config import TrainConfig, default

# TrainConfig's settings that `upseg train` takes as flags, in the dataclass's order
TRAIN_FLAGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["flag"])
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_KEEP = object()  # add_config_flags: keep the field's own help text


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def markdown_table(rows: list[dict[str, object]], columns: Sequence[str]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if value < 1 else f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"base_width\": 8}}', got {text!r}"
        )
    return value


def shown(value: object) -> str:
    """A default as help texts write it: on / off, the shorter of 0.001 and 1e-3."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        mantissa, exponent = f"{value:e}".split("e")
        scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return min(f"{value:g}", scientific, key=len)
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Sequence[str],
    helps: Mapping[str, str | None] | None = None,
) -> None:
    """A flag for each TrainConfig setting in `names`, its type, metavar and choices taken
    from the field, with no default of its own (an absent flag leaves the configuration's);
    `helps` replaces a field's help text (None: none)."""
    hints = typing.get_type_hints(TrainConfig)
    for name in names:
        field = _FIELDS[name]
        kind = next(t for t in (*typing.get_args(hints[name]), hints[name]) if t is not type(None))
        options: dict[str, object] = {}
        if kind is bool:
            options.update(type=parse_bool, metavar="BOOL")
        elif kind is dict:
            options.update(type=json_object, metavar="JSON")
        elif kind in (int, float):
            options["type"] = kind
        choices = field.metadata["choices"]
        if choices is not None:
            options["choices"] = choices() if callable(choices) else choices
        text = (helps or {}).get(name, _KEEP)
        text = field.metadata["help"] if text is _KEEP else text
        if text is not None:
            options["help"] = text.replace("{default}", shown(default(name)))
        parser.add_argument(flag_name(name), **options)


def model_flags(args: argparse.Namespace, defaults: dict[str, object], what: str) -> None:
    """Refuse model flags beside run directories (a run brings its own model); otherwise
    fill in the defaults of those not given."""
    given = [flag_name(k) for k in defaults if getattr(args, k) is not None]
    if what and given:
        args.parser.error(f"{what} brings its own model; drop {' '.join(given)}")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
