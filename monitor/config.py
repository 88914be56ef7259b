"""Settings: environment variables over an optional robmon.toml over embedded defaults.

With nothing configured everything lives under ``ROBMON_HOME`` (default ``./.robmon``): the SQLite
database, the MLflow SQLite store and its artifacts. Each later part (audit defaults, detector,
alerts, dashboard users, ...) reads its own table of robmon.toml through ``Settings.section``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from monitor.errors import ConfigError
from monitor.ingest.convert_rules import config_rules

CONFIG_FILE_ENV = "ROBMON_CONFIG"
DEFAULT_CONFIG_FILE = "robmon.toml"
MLFLOW_ENV_DEFAULTS = {
    # Telemetry is off unless the user turned it on explicitly.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Bounded retries against an unreachable tracking server (MLflow's default waits minutes).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # MLflow's INFO lines would mix with robmon's output; robmon logs what matters itself.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
_SECRET_KEY = re.compile(r"(password|secret|token|api_key)", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_TOP_LEVEL_KEYS = {"home", "db_url", "mlflow_tracking_uri", "mlflow_artifact_root", "input_root"}


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one robmon process."""

    home: Path
    db_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: Path | None
    input_root: Path
    config_file: Path | None
    embedded_db: bool
    sources: dict[str, str] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """The robmon.toml table ``[name]`` (empty when absent)."""
        value = self.tables.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"robmon.toml: [{name}] must be a table, not {type(value).__name__}.")
        return value

    def artifact_location(self, experiment: str) -> str | None:
        """Explicit artifact location for a new MLflow experiment (None: the server decides)."""
        if self.mlflow_artifact_root is None:
            return None
        return (self.mlflow_artifact_root / experiment).as_uri()

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain data with every password and secret masked."""
        return mask_secrets(
            {
                "home": str(self.home),
                "db_url": self.db_url,
                "embedded_db": self.embedded_db,
                "mlflow_tracking_uri": self.mlflow_tracking_uri,
                "mlflow_artifact_root": str(self.mlflow_artifact_root)
                if self.mlflow_artifact_root
                else None,
                "input_root": str(self.input_root),
                "config_file": str(self.config_file) if self.config_file else None,
                "sources": self.sources,
                "mlflow_telemetry": "off" if mlflow_telemetry_disabled() else "on",
                "tables": self.tables,
            }
        )


def mask_secrets(value: Any, key: str = "") -> Any:
    """Replace values of secret-looking keys with ``***`` and pass every URL, whole value or
    quoted inside a text, through ``mask_url``."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and value:
            return "***"
        return _URL_IN_TEXT.sub(_mask_url_match, value)
    return value


def mask_url(url: str) -> str:
    """A URL with whatever may be a token masked, for every URL robmon shows (database, MLflow,
    Redis, webhooks): a password (``user:***@``; a user info without one is all ``***``), the
    parameters after ``;`` in the path, every path segment after the first, every query value
    and the fragment
    (https://hooks.slack.com/services/T0/B0/X?token=t -> https://hooks.slack.com/services/***?token=***).
    The path of a URL without a host (sqlite:///path.db, file:///path) is a local file and is
    shown; a URL that cannot be taken apart (e.g. its port is not a number up to 65535) is
    ``***`` as a whole."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        at = f"{user}:***@" if colon and user else "***@"
    netloc = at + (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    query = "&".join(_mask_item(item) for item in parts.query.split("&")) if parts.query else ""
    fragment = "***" if parts.fragment else ""
    if not parts.netloc:  # sqlite:///path.db, file:///path: a local file, shown as written
        local = url.split("#", 1)[0].split("?", 1)[0]
        return local + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    return urlunsplit((parts.scheme, netloc, _mask_path(parts.path), query, fragment))


def _mask_path(path: str) -> str:
    """``/first;k=v/T0/B0`` -> ``/first;k=***/***``: the first segment names the endpoint."""
    segments = path.split("/")  # "/services/T0/B0" -> ["", "services", "T0", "B0"]
    if len(segments) < 2:
        return path
    name, *params = segments[1].split(";")
    segments[1] = ";".join([name, *(_mask_item(p) for p in params)])
    return "/".join([*segments[:2], "***"] if any(segments[2:]) else segments)


def _mask_url_match(match: re.Match[str]) -> str:
    """A URL found in a text, masked; the punctuation that closes the sentence stays."""
    url = match[0].rstrip(".,;:!?)")
    return mask_url(url) + match[0][len(url) :]


def _mask_item(item: str) -> str:
    """``name=value`` -> ``name=***``; an item without a name may be a token itself."""
    name, equals, _ = item.partition("=")
    return f"{name}=***" if equals else ("***" if item else item)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read the environment and robmon.toml; the environment wins over the file."""
    env = dict(os.environ if environ is None else environ)
    config_file, tables = _read_config_file(env)
    config_rules(tables)  # [ingest.convert."NAME"]: a bad rule stops here, in one sentence
    top = tables.get("robmon", {})
    unknown = set(top) - _TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(
            f"robmon.toml: unknown key robmon.{sorted(unknown)[0]} "
            f"(known: {', '.join(sorted(_TOP_LEVEL_KEYS))})."
        )
    sources: dict[str, str] = {}

    def pick(name: str, env_name: str, default: Any) -> Any:
        if env.get(env_name):
            sources[name] = f"env {env_name}"
            return env[env_name]
        if name in top:
            sources[name] = f"robmon.toml robmon.{name}"
            return top[name]
        sources[name] = "default"
        return default

    home = Path(pick("home", "ROBMON_HOME", ".robmon")).expanduser().resolve()
    db_url = pick("db_url", "ROBMON_DB_URL", None)
    embedded_db = db_url is None
    if db_url is None:
        db_url = f"sqlite:///{home / 'robmon.db'}"
    tracking_uri = pick("mlflow_tracking_uri", "MLFLOW_TRACKING_URI", None)
    if tracking_uri is None:
        tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    artifact_root = pick("mlflow_artifact_root", "ROBMON_MLFLOW_ARTIFACT_ROOT", None)
    if artifact_root is None and _is_local_store(tracking_uri):
        artifact_root = home / "mlartifacts"
    input_root = Path(pick("input_root", "ROBMON_INPUT_ROOT", home / "inputs")).expanduser()
    for name, value in (("db_url", db_url), ("mlflow_tracking_uri", tracking_uri)):
        if not isinstance(value, str) or ("://" not in value and not value.startswith("sqlite:")):
            raise ConfigError(f"{name} must be a URL such as sqlite:///path.db, not {value!r}.")
    return Settings(
        home=home,
        db_url=db_url,
        mlflow_tracking_uri=tracking_uri,
        mlflow_artifact_root=Path(artifact_root).expanduser().resolve() if artifact_root else None,
        input_root=input_root.resolve(),
        config_file=config_file,
        embedded_db=embedded_db,
        sources=sources,
        tables=tables,
    )


def apply_mlflow_environment(settings: Settings) -> None:
    """Point MLflow at the configured store; telemetry off and retries bounded unless set."""
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    os.environ.setdefault("MLFLOW_REGISTRY_URI", settings.mlflow_tracking_uri)
    if _is_local_store(settings.mlflow_tracking_uri):
        settings.home.mkdir(parents=True, exist_ok=True)


def mlflow_telemetry_disabled() -> bool:
    """Whether MLflow telemetry is off once robmon's defaults apply (off unless turned on)."""
    setting = os.environ.get(
        "MLFLOW_DISABLE_TELEMETRY", MLFLOW_ENV_DEFAULTS["MLFLOW_DISABLE_TELEMETRY"]
    )
    return setting.lower() in ("true", "1") or os.environ.get("DO_NOT_TRACK", "") == "true"


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", "."))


def _read_config_file(env: dict[str, str]) -> tuple[Path | None, dict[str, Any]]:
    explicit = env.get(CONFIG_FILE_ENV)
    path = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    if not path.exists():
        if explicit:
            raise ConfigError(f"{CONFIG_FILE_ENV} points to {path}, which does not exist.")
        return None, {}
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}.") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}.") from err
    return path.resolve(), tables
