"""The compose file parses (docker-compose 1.29 validates it offline) and runs every service the
README's Deploying section lists, each with a health check and a restart policy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def readme_services() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M))


@pytest.fixture(scope="module")
def compose() -> dict:
    command = shutil.which("docker-compose")
    if command is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    checked = subprocess.run(
        [command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    resolved = subprocess.run(
        [command, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=True,
    )
    return yaml.safe_load(resolved.stdout)


def test_compose_names_every_service_the_readme_lists(compose):
    listed = readme_services()
    assert {"postgres", "redis", "mlflow", "migrate", "scheduler", "worker"} <= listed
    assert set(compose["services"]) == listed


def test_long_running_services_have_health_checks_restarts_and_environment(compose):
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":
            assert service["command"] == ["db", "upgrade"]
            assert service["restart"] == "no"
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    for name in ("scheduler", "worker", "ingester", "dashboard"):
        env = services[name]["environment"]
        assert env["ROBMON_DB_URL"].startswith("postgresql+psycopg://robmon:"), name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert "--redis-stream" in services["ingester"]["command"]
    # published ports stay on the host's loopback
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port.get("host_ip", port) if isinstance(port, dict) else port).startswith(
                "127.0.0.1"
            )


def test_the_image_installs_the_cpu_build_of_torch_first():
    dockerfile = (ROOT / "Dockerfile").read_text()
    torch_line = dockerfile.index('"torch==${TORCH_VERSION}"')
    assert "whl/cpu" in dockerfile
    assert torch_line < dockerfile.index('pip install ".[postgres]"')
    assert 'ENTRYPOINT ["robmon"]' in dockerfile


def test_the_dashboard_service_is_not_refused_and_stays_on_loopback(robmon):
    """Inside the container the dashboard binds 0.0.0.0, which robmon refuses without users
    unless --allow-anonymous-view is given: the service passes the flag (an option the CLI
    really has) and publishes its port on the host's loopback only."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["dashboard"]
    command = service["command"]
    assert command[:3] == ["dashboard", "--host", "0.0.0.0"]
    assert "--allow-anonymous-view" in command
    assert "--allow-anonymous-view" in robmon("dashboard", "--help").stdout
    assert [str(port).split(":")[0] for port in service["ports"]] == ["127.0.0.1"]
