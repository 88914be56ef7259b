"""`robmon demo` checks the dashboard's port before doing any work: a port given with --port
must be free; the default one (8050) gives way to a free port when it is taken."""

import socket

import pytest


@pytest.fixture
def taken_port():
    """A port something is listening on, for the duration of a test."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_a_busy_port_stops_the_demo_before_any_work(home, robmon, taken_port) -> None:
    result = robmon("demo", "--port", str(taken_port))
    assert result.code == 1
    assert result.stderr.strip() == (
        f"error: port {taken_port} on 127.0.0.1 is in use; choose another with --port."
    )
    # nothing was trained, registered, ingested or stored
    assert not (home / "mlflow.db").exists() and not (home / "robmon.db").exists()
    assert not (home / "demo").exists()


def test_the_default_port_gives_way_to_a_free_one(taken_port) -> None:
    from monitor.demo import dashboard_port

    port = dashboard_port("127.0.0.1", None, default=taken_port)
    assert port != taken_port and 0 < port < 65536
    with socket.create_server(("127.0.0.1", port)):  # free indeed
        pass


def test_a_free_port_is_kept(taken_port) -> None:
    from monitor.demo import dashboard_port

    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]
    assert dashboard_port("127.0.0.1", free) == free
    assert dashboard_port("127.0.0.1", None, default=free) == free
