"""Real services on loopback for the deployment tests: PostgreSQL (ROBMON_TEST_POSTGRES_URL),
Redis (ROBMON_TEST_REDIS_URL, default redis://127.0.0.1:6379/15) and an `mlflow server` that
the tests start themselves, with a digits CNN registered in it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import ENV_KEYS
from tests.serving import free_port


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`mlflow server` on loopback (SQLite backend, served artifacts), stopped afterwards."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )

    def healthy() -> bool:
        assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(healthy, 120, "mlflow server")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def served_model(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A digits CNN registered in the server, tagged with its dataset; returns its name."""
    from monitor.architectures import digits_cnn
    from monitor.config import load_settings
    from monitor.datasets import load_dataset
    from monitor.registry import Registry
    from monitor.training import train_classifier

    home = tmp_path_factory.mktemp("register") / ".robmon"
    settings = load_settings({"ROBMON_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_server})
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = digits_cnn()
    train_classifier(model, train.x, train.y, epochs=8, lr=2e-3, seed=0)
    registry = Registry(settings)
    ref = registry.register_torch(
        model.eval(), "served-cnn", train.x[:2], tags={"robustness.dataset": "digits"}
    )
    registry.set_alias(ref.name, "champion", ref.version)
    return ref.name


@pytest.fixture
def deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str, mlflow_server: str
) -> dict[str, str]:
    """Environment of a deployed robmon: PostgreSQL (migrated) and the MLflow server."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    env = {
        "ROBMON_HOME": str(tmp_path / ".robmon"),
        "ROBMON_DB_URL": postgres_url,
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "db", "upgrade"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return env


def robmon_process(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    """A robmon service as its own process (so that it can be killed with SIGKILL)."""
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
    )
