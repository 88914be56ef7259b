"""A guarded model in the registry: ``robmon guard wrap MODEL`` registers a new version whose
pyfunc ``predict`` runs the guard and the model together, so that ``mlflow models serve``
serves it unchanged.

Request rows (``dataframe_records``, ``dataframe_split`` or ``inputs`` as a list of objects):
``source`` (who sent it; required), ``id`` (optional), and the input as in a production record:
``input`` (an object with one of ``array``, ``npy_b64``, ``png_b64``) or one of those three as a
column of its own. ``path`` is refused (a request names no server-side file). Answer rows:
``id``, ``source``, ``verdict`` (allow, review, refuse), ``prediction`` (None when refused),
``confidence``, ``reason``. A row that cannot be read is refused with the reason and published
as it came, so the ingester dead-letters it: nothing is lost.

The version records the policy it was wrapped with (tag ``robustness.guard.policy``, and the
pyfunc's model config) and the parent it guards (``robustness.parent``, ``robustness.method``
= guard). At serve time the guard reads the parent from the registry, its calibration and the
incident state from robmon's database: the serving process needs robmon installed
(``--env-manager local``) and the settings of the environment it was wrapped in, which the
version records where they hold no password (the serving environment's ROBMON_* and
MLFLOW_TRACKING_URI win). ``ROBMON_GUARD_PUBLISH`` redirects the published records.

Audits of a guarded version audit its parent (``Registry.load``): an attacker who is not refused
gets the parent's answers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from monitor.guard.policy import GuardPolicy

POLICY_TAG = "robustness.guard.policy"
ANSWER_COLUMNS = ("id", "request_id", "source", "verdict", "prediction", "confidence", "reason")


# MLflow inspects predict when the class is made and warns that it has no type hints (which it
# would read as a schema): predict takes rows of any shape on purpose. MLflow sets its own
# warning filters around that check, so the warning is dropped where it is shown.
_show = warnings.showwarning


def _show_but_type_hints(message, category, *args, **kwargs):
    if "type hints to the `predict` method" not in str(message):
        _show(message, category, *args, **kwargs)


with warnings.catch_warnings():
    warnings.showwarning = _show_but_type_hints

    class GuardedModel(mlflow.pyfunc.PythonModel):
        """The pyfunc of a guarded version (see the module docstring)."""

        def load_context(self, context: Any) -> None:
            from monitor.config import load_settings
            from monitor.guard.guard import Guard

            _log_to_stderr()
            config = context.model_config or {}
            environ = {**config.get("environ", {}), **os.environ}
            policy = dict(config.get("policy", {}))
            if os.environ.get("ROBMON_GUARD_PUBLISH") is not None:
                policy["publish"] = os.environ["ROBMON_GUARD_PUBLISH"]
            settings = load_settings(environ)
            self.guard = Guard(
                f"models:/{config['model']}/{config['version']}",
                settings=settings,
                policy=GuardPolicy.from_table(policy),
            )

        # no type hints: MLflow would read them as a schema and warn
        def predict(self, context, model_input, params=None):
            import pandas as pd

            rows = request_rows(model_input)
            answers = self.guard.check_rows(rows)
            # object columns: a refused row answers null, not NaN (not JSON); ints stay ints
            answers = [a.as_answer() for a in answers]
            return pd.DataFrame(answers, columns=list(ANSWER_COLUMNS), dtype=object)


def request_rows(model_input: Any) -> list[Any]:
    """The request as a list of rows, whatever shape MLflow's parser gave it: a DataFrame, a
    dict of columns, a list of objects; a bare tensor (``{"inputs": [[...]]}``, no source) is
    one row per image, each refused for its missing source and published for the dead
    letters."""
    if hasattr(model_input, "to_dict"):  # a pandas DataFrame
        rows = model_input.to_dict("records")
    elif isinstance(model_input, dict):  # columns -> values
        columns = {k: _as_list(v) for k, v in model_input.items()}
        n = max((len(v) for v in columns.values()), default=0)
        rows = [{k: v[i] if i < len(v) else None for k, v in columns.items()} for i in range(n)]
    elif isinstance(model_input, list | tuple):
        rows = list(model_input)
    elif hasattr(model_input, "tolist"):  # a numpy array: images without a source
        rows = [{"array": image} for image in _as_list(model_input)]
    else:
        rows = [model_input]
    return [_clean(row) for row in rows]


def _as_list(value: Any) -> list[Any]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, list | tuple) else [value]


def _clean(row: Any) -> dict[str, Any]:
    """A row with pandas' NaN for absent cells taken out; anything but an object is kept as is
    (refused later with a reason)."""
    if not isinstance(row, dict):
        return {"input": row}
    return {
        k: (v.tolist() if hasattr(v, "tolist") else v)
        for k, v in row.items()
        if not (isinstance(v, float) and math.isnan(v)) and v is not None
    }


def wrap_model(
    registry: Any, reference: str, policy: GuardPolicy, settings: Any
) -> tuple[Any, Any]:
    """Register a guarded version of ``reference`` beside it: (parent, guarded version)."""
    from monitor.registry import DATASET_TAG, METHOD_TAG, PARENT_TAG

    parent = registry.resolve(reference)
    registry.load(parent)  # a version that cannot be loaded cannot be guarded: say so now
    policy_data = asdict(policy)
    config = {
        "model": parent.name,
        "version": parent.version,
        "policy": policy_data,
        "environ": recorded_environ(settings),
    }
    tags = {
        PARENT_TAG: f"{parent.name}/{parent.version}",
        METHOD_TAG: "guard",
        POLICY_TAG: json.dumps(policy_data, sort_keys=True),
    }
    dataset = registry.version_tags(parent).get(DATASET_TAG)
    if dataset:
        tags[DATASET_TAG] = dataset
    return parent, registry.register_pyfunc(GuardedModel(), parent.name, config, tags=tags)


def _log_to_stderr() -> None:
    """In a serving process nobody configured robmon's logging: its warnings (publishing
    failures, an uncalibrated version) go to stderr, beside the server's log."""
    logger = logging.getLogger("monitor")
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def recorded_environ(settings: Any) -> dict[str, str]:
    """The settings a serving process needs to reach the same registry and database, where
    they hold no password (a password stays in the serving environment)."""
    environ = {}
    if settings.config_file is not None:
        environ["ROBMON_CONFIG"] = str(Path(settings.config_file).resolve())
    for name, value in (
        ("ROBMON_HOME", str(settings.home)),
        ("ROBMON_DB_URL", None if settings.embedded_db else settings.db_url),
        ("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
    ):
        if value and not _has_password(value):
            environ[name] = value
    return environ


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password is not None
    except ValueError:
        return True
