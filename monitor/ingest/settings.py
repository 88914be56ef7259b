"""The ``[ingest]`` table of robmon.toml: what ``robmon serve`` follows, the input limits, and
how often a stream entry may be delivered before it is set aside as a poison pill."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.ingest.records import MAX_LINE_BYTES, MAX_PIXELS, Limits
from monitor.ingest.redis_stream import MAX_DELIVERIES

_KEYS = {
    "paths",
    "batch_size",
    "keep_flagged",
    "poll_interval",
    "max_line_bytes",
    "max_pixels",
    "device",
    "max_deliveries",
    "convert",  # [ingest.convert."NAME"]: read by the ingester's model cache (convert_rules)
}


@dataclass(frozen=True)
class IngestSettings:
    paths: tuple[str, ...] = ()
    batch_size: int = 256
    keep_flagged: Path | None = None
    poll_interval: float = 0.5
    max_line_bytes: int = MAX_LINE_BYTES
    max_pixels: int = MAX_PIXELS
    device: str = "cpu"
    max_deliveries: int = MAX_DELIVERIES

    @staticmethod
    def from_settings(settings: Settings) -> IngestSettings:
        table: dict[str, Any] = dict(settings.section("ingest"))
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(
                f"robmon.toml: unknown key ingest.{sorted(unknown)[0]} "
                f"(known: {', '.join(sorted(_KEYS))})."
            )
        table.pop("convert", None)  # checked when the settings were loaded
        if "paths" in table:
            paths = table["paths"]
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ConfigError("robmon.toml: ingest.paths is a list of files or globs.")
            table["paths"] = tuple(paths)
        if table.get("keep_flagged"):
            table["keep_flagged"] = Path(table["keep_flagged"]).expanduser()
        for key in ("batch_size", "max_line_bytes", "max_pixels", "max_deliveries"):
            if key in table and (not isinstance(table[key], int) or table[key] < 1):
                raise ConfigError(f"robmon.toml: ingest.{key} must be a positive integer.")
        return IngestSettings(**table)

    def limits(self, settings: Settings) -> Limits:
        return Limits(
            input_root=settings.input_root,
            max_line_bytes=self.max_line_bytes,
            max_pixels=self.max_pixels,
        )
