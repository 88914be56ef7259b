"""Shared fixtures: isolated ROBMON_HOMEs, a demo MLflow store seeded once, PostgreSQL databases.

Nothing here mocks robmon or MLflow: stores are real SQLite files in temp dirs, PostgreSQL is the
server named by ROBMON_TEST_POSTGRES_URL (tests needing it are skipped when it is unset).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from monitor.architectures import digits_cnn
from monitor.datasets import load_dataset
from monitor.training import train_classifier

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
torch.set_num_threads(1)

ENV_KEYS = (
    "ROBMON_HOME",
    "ROBMON_DB_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "ROBMON_CONFIG",
    "ROBMON_INPUT_ROOT",
    "ROBMON_MLFLOW_ARTIFACT_ROOT",
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ROBMON_HOME; the working directory is its parent (no stray robmon.toml)."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    robmon_home = tmp_path / ".robmon"
    monkeypatch.setenv("ROBMON_HOME", str(robmon_home))
    return robmon_home


def seeded_store(tmp_path_factory: pytest.TempPathFactory, name: str, seed) -> Path:
    """A ROBMON_HOME that ``seed(path)`` fills, built once per test run however many xdist
    workers ask for it: under a file lock, a second worker waits for the first one's store
    instead of training the same models again."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by this run's workers, not by other runs
    store, done = base / f"shared-{name}" / ".robmon", base / f"shared-{name}.done"
    with (base / f"shared-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(store.parent, ignore_errors=True)  # a build that failed half-way
            store.parent.mkdir(parents=True)
            seed(store)
            done.touch()
    return store


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ROBMON_HOME with the demo models in MLflow and their detector calibrations in the
    database (seeded once per test run, shared by the xdist workers)."""
    return seeded_store(tmp_path_factory, "demo", _seed_demo)


def _seed_demo(store: Path) -> None:
    from monitor.calibrate import calibrate_model
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.demo import seed_demo_models
    from monitor.registry import Registry

    settings = load_settings({"ROBMON_HOME": str(store)})
    registry = Registry(settings)
    models = seed_demo_models(registry)
    db = open_database(settings)
    for model in models:  # the ingester finds every demo model calibrated
        calibrate_model(db, registry, settings, model.ref)
    db.dispose()


@pytest.fixture(scope="session")
def digits28_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ROBMON_HOME with two CNNs on 28×28 digits (``digits28-cnn`` v1, calibrated: the
    target; v2: a surrogate for transfer attacks), seeded once per test run."""
    return seeded_store(tmp_path_factory, "digits28", _seed_digits28)


def _seed_digits28(store: Path) -> None:
    from monitor.architectures import cnn28
    from monitor.calibrate import calibrate_model
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.demo import register_trained
    from monitor.registry import Registry

    settings = load_settings({"ROBMON_HOME": str(store)})
    registry = Registry(settings)
    target, _ = register_trained(registry, "digits28-cnn", "digits28", cnn28, epochs=6, seed=0)
    register_trained(registry, "digits28-cnn", "digits28", cnn28, epochs=6, seed=1)
    registry.set_alias("digits28-cnn", "champion", target.version)  # production answers with v1
    db = open_database(settings)
    calibrate_model(db, registry, settings, target, limit=360)
    db.dispose()


def copy_store(store: Path, home: Path) -> Path:
    """A private copy of a seeded store (its databases; artifacts are read in place)."""
    home.mkdir(parents=True, exist_ok=True)
    for name in ("mlflow.db", "robmon.db"):
        shutil.copy(store / name, home / name)
    return home


@pytest.fixture
def demo_home(home: Path, demo_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo store (registry writes stay in this test)."""
    home.mkdir(parents=True)
    shutil.copy(demo_store / "mlflow.db", home / "mlflow.db")
    shutil.copy(demo_store / "robmon.db", home / "robmon.db")
    # Artifacts stay where the demo store keeps them (their URIs are absolute); new runs of this
    # test get their own experiments' folders under ``home``.
    return home


@pytest.fixture
def settings(home: Path):
    from monitor.config import load_settings

    return load_settings()


@pytest.fixture
def demo_settings(demo_home: Path):
    from monitor.config import load_settings

    return load_settings()


@pytest.fixture
def demo_registry(demo_settings):
    from monitor.registry import Registry

    return Registry(demo_settings)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("ROBMON_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ROBMON_TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_server_url).set(drivername="postgresql+psycopg")
    name = f"robmon_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin.set(database=name).render_as_string(hide_password=False)
    with engine.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database backend in turn: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_url")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        import json

        return json.loads(self.stdout)


def run_robmon(*args: str) -> CliResult:
    """Run the robmon CLI in this process (same entry point as the console script)."""
    from monitor.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["robmon", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def robmon():
    return run_robmon


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_cnn():
    """The demo CNN architecture trained on the digits train split (about 2 s)."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = digits_cnn()
    train_classifier(model, train.x, train.y, epochs=15, lr=2e-3, seed=0)
    return model.eval()


class ForwardCounter:
    """Counts samples through a model's forward passes (an outside view of an attack's cost)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.samples = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output) -> None:
        self.samples += len(inputs[0])


@pytest.fixture
def forward_counter():
    handles = []

    def attach(model):
        counter = ForwardCounter(model)
        handles.append(counter.handle)
        return counter

    yield attach
    for handle in handles:
        handle.remove()


@pytest.fixture(scope="module")
def module_home(tmp_path_factory, demo_store):
    """A private copy of the demo store shared by one test module."""
    home = tmp_path_factory.mktemp("alerts") / ".robmon"
    home.mkdir()
    for name in ("mlflow.db", "robmon.db"):
        shutil.copy(demo_store / name, home / name)
    with pytest.MonkeyPatch.context() as patch:
        for key in ENV_KEYS:
            patch.delenv(key, raising=False)
        patch.setenv("ROBMON_HOME", str(home))
        patch.chdir(home.parent)
        yield home
    assert not os.environ.get("ROBMON_HOME", "").startswith(str(home))


# Files that take longest, in order: they start first so that the two xdist workers (one file at
# a time, ``--dist loadfile --no-loadscope-reorder``) do not end on one long file while the other
# worker idles. Every other file keeps its place after them.
SLOW_FILES = (
    "tests/alerts/test_probing.py",
    "tests/deploy/test_workers.py",
    "tests/deploy/test_redis_ingest.py",
    "tests/test_scheduler.py",
    "tests/alerts/test_simulation.py",
    "tests/harden/test_harden.py",
    "tests/test_demo.py",
    "tests/ingest/test_exactly_once.py",
    "tests/audit/test_runner.py",
    "tests/test_gate.py",
    "tests/dashboards/test_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def torchattacks_or_skip():
    """torchattacks (the AutoAttack port the attack tests compare with), or a skip; CI sets
    ROBMON_REQUIRE_TORCHATTACKS, where a missing install fails instead."""
    if os.environ.get("ROBMON_REQUIRE_TORCHATTACKS"):
        import torchattacks

        return torchattacks
    return pytest.importorskip("torchattacks")


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("ROBMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as err:
        if os.environ.get("ROBMON_TEST_POSTGRES_URL"):  # CI runs the services: do not skip
            raise
        pytest.skip(f"no Redis at {url}: {err}")
    return url


@pytest.fixture
def stream(redis_url: str):
    """A fresh stream name, deleted afterwards."""
    import redis

    name = f"robmon-test-{uuid.uuid4().hex[:8]}"
    yield f"{redis_url}/{name}"
    redis.Redis.from_url(redis_url).delete(name)
