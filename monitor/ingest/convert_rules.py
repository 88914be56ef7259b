"""Conversion rules: what the ingester may do to an input that does not fit its model.

A rule comes from robmon.toml (``[ingest.convert."NAME"]``, for every version of model NAME) or
from the model version's tag ``robustness.convert`` (JSON); the configuration wins. Keys:

    resize = "crop"     shorter side to the model's size, then a centre crop (torchvision's
                        Resize + CenterCrop)
           | "stretch"  plain resize to the model's H×W (the aspect ratio is not kept)
           | "none"     (default) no resizing
    colour = true       grey ↔ RGB (L→RGB repeats the channel, RGB→L is ITU-R 601 luma) and
                        RGBA→RGB, LA→L (alpha composited over white); default false

This module is torch-free: ``load_settings`` checks the configured rules when robmon.toml is
read, so a bad rule stops every command with one sentence before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from monitor.errors import ConfigError, quoted

CONVERT_TAG = "robustness.convert"
RESIZE_MODES = ("crop", "stretch", "none")
_KEYS = ("colour", "resize")
RESIZED = "resized"  # how the text of a resize step starts (``conversion_kinds``)


@dataclass(frozen=True)
class ConvertRule:
    """How to fit an input to a model; ``origin`` says where the rule was stated."""

    resize: str = "none"
    colour: bool = False
    origin: str = ""


def config_section(name: str) -> str:
    """The robmon.toml table that holds model ``name``'s rule."""
    return f"[ingest.convert.{json.dumps(name)}]"


def parse_rule(value: Any, origin: str) -> ConvertRule:
    """A rule from a TOML table or decoded JSON; ValueError says what is wrong (a phrase)."""
    if not isinstance(value, dict):
        raise ValueError(f"it must be a table of {' and '.join(_KEYS)}, not {_kind(value)}")
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown key {quoted(unknown[0])} (known: {', '.join(_KEYS)})")
    resize = value.get("resize", "none")
    if resize not in RESIZE_MODES:
        raise ValueError(f'resize must be "crop", "stretch" or "none", not {quoted(resize)}')
    colour = value.get("colour", False)
    if not isinstance(colour, bool):
        raise ValueError(f"colour must be true or false, not {quoted(colour)}")
    return ConvertRule(resize, colour, origin)


def config_rules(tables: dict[str, Any]) -> dict[str, ConvertRule]:
    """The ``[ingest.convert."NAME"]`` rules of robmon.toml's tables, by model name."""
    ingest = tables.get("ingest", {})
    table = ingest.get("convert", {}) if isinstance(ingest, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(
            'robmon.toml: ingest.convert must hold one table per model, [ingest.convert."NAME"].'
        )
    rules = {}
    for name, value in table.items():
        section = config_section(name)
        try:
            rules[name] = parse_rule(value, section)
        except ValueError as err:
            raise ConfigError(f"robmon.toml: {section}: {err}.") from None
    return rules


def tag_rule(tags: dict[str, str]) -> ConvertRule | None:
    """The rule of a model version's ``robustness.convert`` tag (None without the tag);
    ValueError names the tag and what is wrong with it."""
    text = tags.get(CONVERT_TAG)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"its tag {CONVERT_TAG} is not JSON ({quoted(text)})") from None
    try:
        return parse_rule(value, f"tag {CONVERT_TAG}")
    except ValueError as err:
        raise ValueError(f"its tag {CONVERT_TAG} is not valid: {err}") from None


def rule_hint(name: str, resize: bool, colour: bool, rule: ConvertRule | None) -> str:
    """The clause of a dead letter that names the rule that would convert the input (``rule``:
    the model's rule that did not suffice, if it has one)."""
    wanted = (['resize = "crop"'] if resize else []) + (["colour = true"] if colour else [])
    if rule is not None and rule.origin.startswith("["):
        return f"add {', '.join(wanted)} to {rule.origin} to convert it"
    tag = json.dumps(
        {**({"resize": "crop"} if resize else {}), **({"colour": True} if colour else {})}
    )
    if rule is not None:
        return f"set {', '.join(wanted)} in the tag {CONVERT_TAG} to convert it"
    return (
        f"add {config_section(name)} {', '.join(wanted)} "
        f"(or tag {CONVERT_TAG} '{tag}') to convert it"
    )


def conversion_kinds(text: str) -> list[str]:
    """The kind of each step of a stored conversion (``resized 512×512→224×224 (crop); L→RGB``
    -> resize, colour): the label of ``robmon_ingest_conversions_total``."""
    return ["resize" if s.startswith(RESIZED) else "colour" for s in text.split("; ") if s]


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
