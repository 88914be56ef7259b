from pathlib import Path

import pytest

from monitor.config import load_settings, mask_secrets
from monitor.errors import ConfigError


def test_embedded_defaults_live_under_robmon_home(home: Path) -> None:
    settings = load_settings()
    assert settings.home == home
    assert settings.db_url == f"sqlite:///{home / 'robmon.db'}"
    assert settings.embedded_db
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.mlflow_artifact_root == home / "mlartifacts"
    assert settings.artifact_location("robustness-audits") == (
        (home / "mlartifacts" / "robustness-audits").as_uri()
    )


def test_environment_wins_over_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Path("robmon.toml").write_text(
        '[robmon]\ndb_url = "sqlite:///from-file.db"\nmlflow_tracking_uri = "http://mlflow:5000"\n'
    )
    monkeypatch.setenv("ROBMON_DB_URL", "postgresql://u:pw@db/robmon")
    settings = load_settings()
    assert settings.db_url == "postgresql://u:pw@db/robmon"
    assert not settings.embedded_db
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.mlflow_artifact_root is None  # a tracking server decides for itself
    assert settings.sources["db_url"] == "env ROBMON_DB_URL"
    assert settings.sources["mlflow_tracking_uri"] == "robmon.toml robmon.mlflow_tracking_uri"


def test_masks_passwords_in_urls_and_secret_keys() -> None:
    masked = mask_secrets(
        {"db_url": "postgresql://robmon:hunter2@db:5432/x", "webhook": {"secret": "s3"}, "n": 3}
    )
    assert masked == {
        "db_url": "postgresql://robmon:***@db:5432/x",
        "webhook": {"secret": "***"},
        "n": 3,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[robmon\n", "is not valid TOML"),
        ('[robmon]\nhme = "x"\n', "unknown key robmon.hme"),
        ('[robmon]\ndb_url = "not a url"\n', "db_url must be a URL"),
    ],
)
def test_bad_config_file_is_one_sentence(home: Path, text: str, message: str) -> None:
    Path("robmon.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_config_command_json_masks_passwords(home: Path, monkeypatch, robmon) -> None:
    monkeypatch.setenv("ROBMON_DB_URL", "postgresql://robmon:hunter2@127.0.0.1/x")
    result = robmon("config", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["db_url"] == "postgresql://robmon:***@127.0.0.1/x"
    assert "hunter2" not in result.stdout
    assert data["mlflow_telemetry"] == "off"
    assert data["home"] == str(home)


def test_missing_explicit_config_file(home: Path, monkeypatch, robmon) -> None:
    monkeypatch.setenv("ROBMON_CONFIG", "nowhere.toml")
    result = robmon("config")
    assert result.code == 1
    assert result.stderr.strip() == (
        "error: ROBMON_CONFIG points to nowhere.toml, which does not exist."
    )


def test_config_masks_tokens_in_every_url(home: Path, monkeypatch, robmon) -> None:
    """Query values and path tokens are masked in the tracking URI, the database URL and any
    URL in robmon.toml (a Redis URL here), by the same rule as webhook URLs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:mlpw@mlflow.example.com/?token=mltok")
    monkeypatch.setenv("ROBMON_DB_URL", "postgresql://robmon:pgpw@db/x?sslpassword=sslpw")
    Path("robmon.toml").write_text('[ingest_extra]\nstream = "redis://:rpw@r:6379/0/s?k=rtok"\n')
    shown = robmon("config", "--json")
    assert shown.code == 0, shown.stderr
    data = shown.json()
    assert data["mlflow_tracking_uri"] == "https://user:***@mlflow.example.com/?token=***"
    assert data["db_url"] == "postgresql://robmon:***@db/x?sslpassword=***"
    assert data["tables"]["ingest_extra"]["stream"] == "redis://***@r:6379/0/***?k=***"
    table = robmon("config")
    assert table.code == 0, table.stderr
    for secret in ("mlpw", "mltok", "pgpw", "sslpw", "rpw", "rtok"):
        assert secret not in shown.stdout + table.stdout
