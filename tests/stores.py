"""Opening the settings, database and registry of a test's ROBMON_HOME."""

from pathlib import Path


def context_for(home: Path):
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.registry import Registry

    settings = load_settings()
    return settings, open_database(settings), Registry(settings)
