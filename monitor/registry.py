"""MLflow model registry: resolve references, list models, load classifiers, write tags and runs.

References are ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a bare ``NAME`` (its
``champion`` alias if set, else its latest version). Every call goes through ``Registry._call``,
which turns MLflow's exceptions into one-sentence ``RegistryError``s; retries against an
unreachable server are bounded (see ``config.MLFLOW_ENV_DEFAULTS``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import torch

from monitor.classifiers import BlackBoxClassifier, Classifier, TorchClassifier, layout_from_shape
from monitor.config import Settings, apply_mlflow_environment
from monitor.contracts import (
    CONTRACT_TAG,
    InputContract,
    PixelAdapter,
    from_signature,
    parse_contract,
    resolve_contract,
    takes_floats,
)
from monitor.errors import ModelIncompatible, ModelNotFound, RegistryError, RegistryUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ALIAS = "champion"
MODELS_EXPERIMENT = "robmon-models"
DATASET_TAG = "robustness.dataset"
PARENT_TAG = "robustness.parent"  # NAME/VERSION a hardened or defended version derives from
METHOD_TAG = "robustness.method"  # how robmon derived it (fgsm-rs, pgd, defend)
_REF = re.compile(r"^(?:models:/)?(?P<name>[^/@]+?)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))?$")
# the store behind the server is down or busy: a pause, never an answer about what was asked
_UNAVAILABLE_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
_UNREACHABLE = ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out")


@dataclass(frozen=True)
class ModelVersionRef:
    """One resolved model version; ``alias`` records how it was reached, if by alias."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    tags: dict[str, str]
    created_at: datetime
    run_id: str | None
    source: str | None


@dataclass
class ModelInfo:
    name: str
    aliases: dict[str, str]
    versions: list[VersionInfo] = field(default_factory=list)
    description: str | None = None


def parse_reference(text: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a reference; raises ModelNotFound for malformed text."""
    match = _REF.match(text.strip())
    if not match:
        raise ModelNotFound(
            f"{text!r} is not a model reference; use NAME, models:/NAME/VERSION or "
            "models:/NAME@ALIAS."
        )
    return match["name"], match["version"], match["alias"]


class Registry:
    """The gateway to MLflow for everything robmon reads or writes there."""

    def __init__(self, settings: Settings) -> None:
        apply_mlflow_environment(settings)
        from mlflow import MlflowClient

        self.settings = settings
        self.client = MlflowClient(
            tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
        )
        self._model_infos: dict[tuple[str, str, str], Any] = {}

    # -- errors ---------------------------------------------------------------------------

    def _call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        not_found: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run an MLflow call, translating its failures into one-sentence errors.

        ``not_found`` is the sentence for a missing resource (default: MLflow's own words).
        """
        import mlflow
        from mlflow.exceptions import MlflowException

        # loaders that take a models:/ URI use MLflow's process-wide URIs: point them at this
        # registry's store (a process may hold registries of several stores)
        mlflow.set_tracking_uri(self.settings.mlflow_tracking_uri)
        mlflow.set_registry_uri(self.settings.mlflow_tracking_uri)
        chatter = io.StringIO()  # MLflow prints run links on stdout: stdout stays ours (--json)
        try:
            with contextlib.redirect_stdout(chatter):
                return fn(*args, **kwargs)
        except MlflowException as err:
            text = str(err)
            if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
                raise ModelNotFound(not_found or f"{what}: {_first_line(text)}.") from err
            if err.error_code in _UNAVAILABLE_CODES or any(m in text for m in _UNREACHABLE):
                raise RegistryUnavailable(
                    f"the MLflow tracking server at {self.settings.mlflow_tracking_uri} "
                    f"is unreachable ({what})."
                ) from err
            raise RegistryError(f"MLflow failed to {what}: {_first_line(text)}.") from err
        except OSError as err:  # requests' connection errors are OSErrors
            raise RegistryUnavailable(
                f"the MLflow tracking server at {self.settings.mlflow_tracking_uri} "
                f"is unreachable ({what}): {err}."
            ) from err
        finally:
            for line in chatter.getvalue().splitlines():
                log.info("mlflow: %s", line)

    # -- references -----------------------------------------------------------------------

    def resolve(self, reference: str) -> ModelVersionRef:
        """The concrete version a reference points to."""
        name, version, alias = parse_reference(reference)
        model = self._get_model(name)
        aliases = {a: str(v) for a, v in (model.aliases or {}).items()}
        if version is not None:
            found = self._call(
                f"find version {version} of {name!r}",
                self.client.get_model_version,
                name,
                version,
                not_found=f"model {name!r} has no version {version}.",
            )
            return ModelVersionRef(name, str(found.version))  # "01" is version 1
        if alias is not None:
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ModelNotFound(f"model {name!r} has no alias {alias!r} (aliases: {known}).")
            return ModelVersionRef(name, aliases[alias], alias)
        if DEFAULT_ALIAS in aliases:
            return ModelVersionRef(name, aliases[DEFAULT_ALIAS], DEFAULT_ALIAS)
        versions = self._versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no versions.")
        return ModelVersionRef(name, str(max(int(v.version) for v in versions)))

    def _get_model(self, name: str) -> Any:
        return self._call(
            f"find model {name!r}",
            self.client.get_registered_model,
            name,
            not_found=f"model {name!r} is not registered in MLflow "
            f"({self.settings.mlflow_tracking_uri}).",
        )

    def _versions(self, name: str) -> list[Any]:
        return self.search_versions(f"name = '{_quote(name)}'")

    def search_versions(self, filter_string: str) -> list[Any]:
        """Model versions matching an MLflow filter (e.g. on ``tags.`key` = 'value'``)."""
        return self._call("search model versions", self.client.search_model_versions, filter_string)

    # -- listing --------------------------------------------------------------------------

    def list_models(self, name: str | None = None) -> list[ModelInfo]:
        """Registered models (one, when ``name`` is given) with their versions and aliases."""
        if name is not None:
            models = [self._get_model(name)]
        else:
            models = self._call("list registered models", _search_all_models, self.client)
        infos = []
        for model in sorted(models, key=lambda m: m.name):
            aliases = {a: str(v) for a, v in (model.aliases or {}).items()}
            by_version: dict[str, list[str]] = {}
            for alias, version in aliases.items():
                by_version.setdefault(version, []).append(alias)
            versions = [
                VersionInfo(
                    version=str(v.version),
                    aliases=sorted(by_version.get(str(v.version), [])),
                    tags=dict(v.tags or {}),
                    created_at=datetime.fromtimestamp(v.creation_timestamp / 1000, UTC),
                    run_id=v.run_id,
                    source=v.source,
                )
                for v in self._versions(model.name)
            ]
            versions.sort(key=lambda v: int(v.version))
            infos.append(ModelInfo(model.name, aliases, versions, model.description))
        return infos

    def version_tags(self, ref: ModelVersionRef) -> dict[str, str]:
        version = self._call(f"read {ref}", self.client.get_model_version, ref.name, ref.version)
        return dict(version.tags or {})

    def _model_info(self, ref: ModelVersionRef) -> Any:
        """The version's MLmodel (flavors, signature), downloaded once per model source: a
        version's model files never change (a model deleted and registered again has another
        source), and a load or a plan asks for them several times."""
        from mlflow.models import get_model_info

        version = self._call(f"read {ref}", self.client.get_model_version, ref.name, ref.version)
        key = (ref.name, ref.version, version.source)
        if key not in self._model_infos:
            self._model_infos[key] = self._call(
                f"read the MLmodel of {ref}", get_model_info, ref.uri
            )
        return self._model_infos[key]

    def flavors(self, ref: ModelVersionRef) -> dict[str, Any]:
        return self._model_info(ref).flavors

    # -- loading --------------------------------------------------------------------------

    def load(self, ref: ModelVersionRef, device: str | torch.device = "cpu") -> Classifier:
        """Torch models as differentiable modules in eval mode; anything else as a black box.

        Either way the classifier takes pixel space: its input contract adapts it. A guarded
        version (``robmon guard wrap``) loads as the parent it guards: its pyfunc answers with
        verdicts, and an attacker the guard lets through gets the parent's answers."""
        ref = self.guarded_parent(ref) or ref
        contract = self.input_contract(ref)
        if "pytorch" in self.flavors(ref):
            return self.load_torch(ref, device, contract)
        return self._load_blackbox(ref, contract)

    def guarded_parent(self, ref: ModelVersionRef) -> ModelVersionRef | None:
        """The version a guarded version guards (None for any other version)."""
        tags = self.version_tags(ref)
        if tags.get(METHOD_TAG) != "guard" or not tags.get(PARENT_TAG):
            return None
        name, _, version = tags[PARENT_TAG].rpartition("/")
        return ModelVersionRef(name, version)

    def input_signature(self, ref: ModelVersionRef) -> tuple[tuple[int, ...] | None, str]:
        """(shape without the batch axis, dtype) of the model's tensor input signature."""
        info = self._model_info(ref)
        schema = info.signature.inputs if info.signature is not None else None
        if schema is None or not schema.is_tensor_spec():
            return None, "float32"
        spec = schema.inputs[0]
        return tuple(spec.shape[1:]), str(spec.type)

    def input_contract(self, ref: ModelVersionRef) -> InputContract:
        """How the version takes pixels: robmon.toml ``[input."NAME"]`` over the tag
        ``robustness.input`` over what the signature says."""
        shape, dtype = self.input_signature(ref)
        tags = self.version_tags(ref)
        signature = ("signature", from_signature(shape, dtype), f"the MLflow signature of {ref}")
        if tags.get(PARENT_TAG) and tags.get(METHOD_TAG):
            # made by robmon harden/defend around the parent's adapter: it takes pixels, whatever
            # [input."NAME"] says about the other versions of the name
            return resolve_contract([signature])
        tag = tags.get(CONTRACT_TAG)
        config = self.settings.section("input").get(ref.name)
        tag_where, config_where = (
            f"the tag {CONTRACT_TAG} of {ref}",
            f'robmon.toml [input."{ref.name}"]',
        )
        return resolve_contract(
            [
                signature,
                ("tag", parse_contract(tag, tag_where, "tag") if tag else {}, tag_where),
                (
                    "config",
                    parse_contract(config, config_where, "config") if config is not None else {},
                    config_where,
                ),
            ]
        )

    def load_torch(
        self,
        ref: ModelVersionRef,
        device: str | torch.device = "cpu",
        contract: InputContract | None = None,
    ) -> Classifier:
        """A differentiable classifier in pixel space; a module whose signature is uint8 and
        that refuses float inputs is loaded as a black box instead (no gradients through it)."""
        import mlflow.pytorch

        device = torch.device(device)
        module = self._call(f"load {ref}", mlflow.pytorch.load_model, ref.uri, map_location=device)
        if not isinstance(module, torch.nn.Module):
            raise ModelIncompatible(f"{ref} did not load as a torch module.")
        # torch.export (pt2) graphs refuse .eval(); they are exported in eval mode already
        with contextlib.suppress(NotImplementedError):
            module.eval()
        module = module.to(device)
        shape, dtype = self.input_signature(ref)
        contract = contract or self.input_contract(ref)
        pixel_shape = contract.pixel_shape(shape)
        if not contract.is_identity:
            module = PixelAdapter(module, contract, round_to_integers=dtype == "uint8").to(device)
            if dtype == "uint8" and not takes_floats(module, pixel_shape, device):
                log.warning(
                    "%s takes uint8 tensors only, so it is audited as a black box "
                    "(transfer attacks; no gradients through it).",
                    ref,
                )
                return self._load_blackbox(ref, contract)
        return TorchClassifier(
            name=str(ref), module=module, device=device, input_shape=pixel_shape, contract=contract
        )

    def _load_blackbox(
        self, ref: ModelVersionRef, contract: InputContract | None = None
    ) -> BlackBoxClassifier:
        import mlflow.pyfunc

        model = self._call(f"load {ref}", mlflow.pyfunc.load_model, ref.uri)
        shape, dtype = self.input_signature(ref)
        contract = contract or self.input_contract(ref)
        layout = layout_from_shape(None if shape is None else (-1, *shape))
        return BlackBoxClassifier(
            name=str(ref),
            predict_fn=model.predict,
            layout="flat" if layout == "flat" else contract.layout,
            dtype=dtype,
            input_shape=contract.pixel_shape(shape),
            contract=contract,
        )

    def find_surrogate(self, dataset: str, exclude: str | None = None) -> ModelVersionRef:
        """The newest torch model version registered for ``dataset`` (tag robustness.dataset)
        whose signature takes floats (a module declared uint8 may refuse them: no gradients)."""
        versions = self.search_versions(f"tags.`{DATASET_TAG}` = '{_quote(dataset)}'")
        for v in sorted(versions, key=lambda v: v.creation_timestamp, reverse=True):
            ref = ModelVersionRef(v.name, str(v.version))
            if v.name == exclude or "pytorch" not in self.flavors(ref):
                continue
            if self.input_signature(ref)[1] != "uint8":
                return ref
        raise ModelNotFound(
            f"no torch model is registered for dataset {dataset!r} to craft transfer attacks on; "
            "pass --surrogate MODEL."
        )

    # -- writing --------------------------------------------------------------------------

    def set_tags(self, ref: ModelVersionRef, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self._call(
                f"tag {ref}",
                self.client.set_model_version_tag,
                ref.name,
                ref.version,
                key,
                str(value),
            )

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call(
            f"move alias {alias!r} of {name!r}",
            self.client.set_registered_model_alias,
            name,
            alias,
            version,
        )

    def delete_alias(self, name: str, alias: str) -> None:
        self._call(
            f"delete alias {alias!r} of {name!r}",
            self.client.delete_registered_model_alias,
            name,
            alias,
        )

    def aliases(self, name: str) -> dict[str, str]:
        model = self._get_model(name)
        return {a: str(v) for a, v in (model.aliases or {}).items()}

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created with an explicit artifact location if missing."""
        experiment = self._call(
            f"find experiment {name!r}", self.client.get_experiment_by_name, name
        )
        if experiment is not None:
            return experiment.experiment_id
        return self._call(
            f"create experiment {name!r}",
            self.client.create_experiment,
            name,
            artifact_location=self.settings.artifact_location(name),
        )

    def register_torch(
        self,
        module: torch.nn.Module,
        name: str,
        example: torch.Tensor,
        *,
        tags: dict[str, str] | None = None,
        experiment: str = MODELS_EXPERIMENT,
        serialization_format: str = "pt2",
    ) -> ModelVersionRef:
        """Log ``module`` (eval mode, CPU) with input example and signature; register a version.

        ``pt2`` (torch.export) is MLflow 3's default and needs no code to load; ``pickle`` keeps
        a trainable module (its classes must be importable where it is loaded).
        """
        import mlflow.pytorch

        module = module.cpu()
        with contextlib.suppress(NotImplementedError):  # a pt2 module is in eval mode already
            module.eval()
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        return self._log_and_register(
            name,
            experiment,
            tags,
            lambda: mlflow.pytorch.log_model(
                module,
                name="model",
                input_example=example.cpu().numpy(),
                registered_model_name=name,
                pip_requirements=requirements,
                serialization_format=serialization_format,
            ),
        )

    def register_pyfunc(
        self,
        python_model: Any,
        name: str,
        model_config: dict[str, Any],
        *,
        tags: dict[str, str] | None = None,
        experiment: str = MODELS_EXPERIMENT,
    ) -> ModelVersionRef:
        """Log a ``mlflow.pyfunc.PythonModel`` (with its model config) as a new version."""
        import mlflow.pyfunc

        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
        ]

        def log_model() -> Any:
            with warnings.catch_warnings():  # MLflow asks for type hints it would read as a schema
                warnings.filterwarnings("ignore", message=".*[Tt]ype hint", category=UserWarning)
                warnings.filterwarnings("ignore", message=".*type hints", category=UserWarning)
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=python_model,
                    model_config=model_config,
                    registered_model_name=name,
                    pip_requirements=requirements,
                )

        return self._log_and_register(name, experiment, tags, log_model)

    def register_sklearn(
        self,
        estimator: Any,
        name: str,
        example: Any,
        *,
        tags: dict[str, str] | None = None,
        experiment: str = MODELS_EXPERIMENT,
    ) -> ModelVersionRef:
        """Log a scikit-learn classifier whose pyfunc returns class probabilities."""
        import mlflow.sklearn
        import sklearn

        return self._log_and_register(
            name,
            experiment,
            tags,
            lambda: mlflow.sklearn.log_model(
                estimator,
                name="model",
                input_example=example,
                registered_model_name=name,
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
                pyfunc_predict_fn="predict_proba",
            ),
        )

    def _log_and_register(
        self, name: str, experiment: str, tags: dict[str, str] | None, log_model: Callable[[], Any]
    ) -> ModelVersionRef:
        import mlflow

        experiment_id = self.experiment_id(experiment)
        chatter = io.StringIO()  # MLflow prints "Created version ..." and run links; log them
        with (
            contextlib.redirect_stderr(chatter),
            contextlib.redirect_stdout(chatter),
            self._call(
                "start a run",
                mlflow.start_run,
                experiment_id=experiment_id,
                run_name=f"register-{name}",
            ),
        ):
            info = self._call(f"log model {name!r}", log_model)
        for line in chatter.getvalue().splitlines():
            log.info("mlflow: %s", line)
        version = str(info.registered_model_version)
        ref = ModelVersionRef(name, version)
        if tags:
            self.set_tags(ref, tags)
        return ref

    def log_run(
        self,
        experiment: str,
        run_name: str,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifacts: dict[str, bytes],
        tags: dict[str, str] | None = None,
    ) -> str:
        """Create a finished run with params, metrics and artifact files; returns its id."""
        import tempfile
        from pathlib import Path

        from mlflow.entities import Metric, Param

        experiment_id = self.experiment_id(experiment)
        run = self._call(
            "create a run",
            self.client.create_run,
            experiment_id,
            run_name=run_name,
            tags=tags or {},
        )
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            self._call(
                "log params and metrics",
                self.client.log_batch,
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            )
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in artifacts.items():
                    (Path(tmp) / name).write_bytes(data)
                self._call("upload artifacts", self.client.log_artifacts, run_id, tmp)
            self._call("finish the run", self.client.set_terminated, run_id, "FINISHED")
        except Exception:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise
        return run_id

    def wait_until_reachable(self, attempts: int = 3, delay: float = 1.0) -> None:
        """Fail with RegistryUnavailable unless MLflow answers within a few tries."""
        for attempt in range(attempts):
            try:
                self._call("list experiments", self.client.search_experiments, max_results=1)
                return
            except RegistryUnavailable:
                if attempt == attempts - 1:
                    raise
                time.sleep(delay * 2**attempt)


def _search_all_models(client: Any) -> list[Any]:
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].rstrip(".") if text.strip() else "unknown error"
