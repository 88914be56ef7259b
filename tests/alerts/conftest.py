import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ENV_KEYS


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


def context_for(home: Path):
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.registry import Registry

    settings = load_settings()
    return settings, open_database(settings), Registry(settings)
