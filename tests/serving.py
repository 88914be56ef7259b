"""``mlflow models serve`` on 127.0.0.1 for tests: started in its own process group, waited
for on /ping, killed with its uvicorn at the end. A server that cannot start here skips the
test with the server's last log lines as the reason."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 120.0  # seconds for the scoring server to answer /ping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_cli() -> Path:
    cli = Path(sys.executable).parent / "mlflow"
    if not cli.exists():
        pytest.skip(f"no mlflow executable beside {sys.executable}")
    return cli


def serving_env(**values: str) -> dict[str, str]:
    """This environment without MLflow's variables, with ``values`` and the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        PATH=f"{mlflow_cli().parent}{os.pathsep}{env.get('PATH', '')}",
        **values,
    )
    return env


def ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


@contextlib.contextmanager
def serve_model(model_uri: str, env: dict[str, str], log_path: Path) -> Iterator[tuple[str, float]]:
    """(server root URL, seconds it took to answer /ping) while the server runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(mlflow_cli()), "models", "serve", "-m", model_uri]
    command += ["-h", "127.0.0.1", "-p", str(port), "--env-manager", "local"]
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while not ping(url):
            if server.poll() is not None:
                pytest.skip(f"mlflow models serve exited {server.returncode}: {tail(log_path)}")
            if time.monotonic() - started > START_TIMEOUT:
                pytest.skip(f"mlflow models serve did not answer /ping in {START_TIMEOUT:g} s")
            time.sleep(0.25)
        yield url, time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server's own group: mlflow and uvicorn
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
