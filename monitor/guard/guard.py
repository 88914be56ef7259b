"""The inline guard: per request, before the model answers, allow, review or refuse.

    guard = Guard("models:/digits-cnn/3")
    verdict = guard.check(x, source="10.1.2.3")      # x: C×H×W (or 1×C×H×W) in [0, 1]
    verdicts = guard.check_batch(images, sources)    # one batched model call for all

Steps of a check: fit each input to the model (the ingester's conversion rules) -> one model call
on the inputs and their squeezed versions (``detect.scores.score_inputs``: (1 + squeezers)
forward passes, batched; the prediction comes from the same call) -> the calibration's flags ->
the policy (``guard.policy``) with the source's state (``guard.sources``, cached) -> a Verdict
-> the request published as a production record (``guard.publish``) for the out-of-band monitor.

Model loading, calibration pick-up and conversion are the ingester's (``ingest.models``): the
guard scores exactly as the monitor does, so its verdicts and the stored scores agree.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import torch

from monitor.config import Settings, load_settings
from monitor.db.session import Database, open_database
from monitor.db.types import utcnow
from monitor.detect.scores import ScoreBatch, score_inputs
from monitor.errors import BadRecord, ModelIncompatible
from monitor.guard.policy import GuardPolicy, worst
from monitor.guard.publish import Publisher, open_publisher
from monitor.guard.sources import SourceState, SourceStates

if TYPE_CHECKING:
    from monitor.ingest.models import ScoringModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What the guard answered for one request. ``predicted`` and ``confidence`` are None when
    refused: a refused source learns nothing of the model (a confidence alone would let it run
    a score-based search). ``scores`` keeps what the detectors saw, for the record."""

    verdict: str  # allow, review, refuse
    source: str | None  # None: the request named no readable source
    predicted: int | None
    confidence: float | None
    scores: dict[str, float | None]
    flags: tuple[str, ...]  # the calibration's flags raised by this input
    reasons: tuple[str, ...]
    request_id: str = ""  # unique per request: what the record and the stored score carry
    client_id: str | None = None  # the id the client sent, if any

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) or "no detector flag, no incident"

    def as_answer(self) -> dict[str, Any]:
        """The row a guarded model answers with."""
        return {
            "id": self.client_id if self.client_id is not None else self.request_id,
            "request_id": self.request_id,
            "source": self.source,
            "verdict": self.verdict,
            "prediction": self.predicted,
            "confidence": self.confidence,
            "reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        """The answer row with the flags and scores behind it."""
        return {**self.as_answer(), "flags": list(self.flags), "scores": self.scores}


def unique_id(client_id: str | None) -> str:
    """A request id no other request has: the client's id (which it may repeat, and with it
    hide requests from the monitor's duplicate check) with a random suffix."""
    suffix = uuid.uuid4().hex[:16]
    return f"{client_id[:200]}~{suffix}" if client_id else suffix


@dataclass
class _Scored:
    """One batch's scores and the calibration's flags on them, computed once for all rows."""

    batch: ScoreBatch
    calibrated: bool
    flags: dict[str, list[bool]]
    scores: dict[str, list[float] | None]

    @staticmethod
    def of(model: Any, images: list[torch.Tensor]) -> _Scored:
        if not images:
            return _Scored(ScoreBatch.empty([]), False, {}, {})
        batch = score_inputs(model.probabilities, torch.stack(images), model.squeezers)
        t = model.calibration.thresholds if model.calibration is not None else None
        combined = t.combined.score(batch) if t is not None and t.combined else None
        flags = {k: v.tolist() for k, v in t.flags(batch, combined).items()} if t else {}
        scores = {
            "confidence": batch.confidence.tolist(),
            "max_divergence": batch.max_divergence.tolist(),
            "combined": None if combined is None else combined.tolist(),
        }
        return _Scored(batch, t is not None, flags, scores)


class Guard:
    """Verdicts for one model version (see the module docstring)."""

    def __init__(
        self,
        model_ref: str,
        *,
        settings: Settings | None = None,
        policy: GuardPolicy | None = None,
        db: Database | None = None,
        device: str = "cpu",
        publisher: Publisher | None = None,
        guarded_version: str | None = None,
    ) -> None:
        from monitor.ingest.models import ModelCache
        from monitor.registry import Registry

        settings = settings or load_settings()
        policy = policy or GuardPolicy.from_table(settings.section("guard"))
        db = db or open_database(settings)
        registry = Registry(settings)
        cache = ModelCache(db, registry, settings, device)
        ref = registry.resolve(model_ref)
        ref = registry.guarded_parent(ref) or ref  # a guarded version: the model it guards
        self._setup(ref, lambda: cache.get(ref), policy, SourceStates(db, policy.cache_seconds))
        self.guarded_version = guarded_version
        if publisher is None and policy.publish:
            publisher = open_publisher(policy.publish)
        self.publisher = publisher

    @classmethod
    def of(
        cls,
        model: ScoringModel,
        policy: GuardPolicy,
        states: SourceStates | None = None,
        publisher: Publisher | None = None,
    ) -> Guard:
        """A guard around an already loaded model (no registry; ``states`` None: no database,
        every source normal): for benchmarks and embedding."""
        guard = cls.__new__(cls)
        guard._setup(model.ref, lambda: model, policy, states or SourceStates(None))
        guard.guarded_version, guard.publisher = None, publisher
        return guard

    def _setup(
        self, ref: Any, model: Callable[[], ScoringModel], policy: GuardPolicy, states: SourceStates
    ) -> None:
        self.ref, self._model, self.policy, self.states = ref, model, policy, states
        self._warn_missing_tiers(model().calibration)  # loads now: no first request pays for it

    def check(self, x: torch.Tensor, source: str, request_id: str | None = None) -> Verdict:
        """The verdict for one input (C×H×W or 1×C×H×W, pixel space)."""
        image = x[0] if x.dim() == 4 else x
        return self.check_batch([image], [source], [request_id])[0]

    def check_batch(
        self,
        images: Sequence[torch.Tensor] | torch.Tensor,
        sources: Sequence[str],
        request_ids: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for a batch (one model call), in order; every request is published."""
        ts = utcnow()
        client_ids = list(request_ids or [None] * len(sources))
        model = self._model()
        fitted: list[torch.Tensor] = []
        unfit: dict[int, str] = {}
        for i, image in enumerate(images):
            try:
                fitted.append(model.fit(image)[0])
            except ModelIncompatible as err:
                unfit[i] = str(err)
        scored = _Scored.of(model, fitted)
        verdicts, row = [], 0
        for i, source in enumerate(sources):
            state = self.states.state(source)
            ids = (unique_id(client_ids[i]), client_ids[i])
            if i in unfit:
                verdicts.append(self._unfit(source, ids, state, unfit[i]))
                continue
            verdicts.append(self._decide(scored, row, source, ids, state))
            row += 1
        if self.publisher is not None:
            self.publisher.publish_batch(self._records(images, verdicts, ts))
        return verdicts

    def check_rows(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        """Verdicts for request rows (``source``, ``id``, an input as in a production record:
        ``guard.wrap``); a row that cannot be read is refused with the reason and published as
        it came."""
        from monitor.guard.rows import read_row

        readable, verdicts = [], [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                readable.append((i, *read_row(row)))
            except BadRecord as err:
                verdicts[i] = self._unreadable(row, str(err))
        if readable:
            checked = self.check_batch(
                [r[3] for r in readable], [r[1] for r in readable], [r[2] for r in readable]
            )
            for (i, *_), verdict in zip(readable, checked, strict=True):
                verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        """Publish what is queued and stop reading source state."""
        self.states.close()
        if self.publisher is not None:
            self.publisher.close()

    # -- steps -------------------------------------------------------------------------------

    def _decide(
        self,
        scored: _Scored,
        row: int,
        source: str,
        ids: tuple[str, str | None],
        state: SourceState,
    ) -> Verdict:
        policy = self.policy
        reasons: list[str] = []
        flags = {k: bool(v[row]) for k, v in scored.flags.items()}
        if scored.calibrated:
            detector, why = policy.detector_verdict(flags)
            if why:
                reasons.append(why)
        else:
            detector = policy.uncalibrated
            if detector != "allow":
                reasons.append(f"{self.ref} has no detector calibration ({detector} by policy)")
        verdict = worst(detector, self._incident(state, reasons))
        verdict = self._override(state, verdict, reasons)
        scores = {k: None if v is None else float(v[row]) for k, v in scored.scores.items()}
        answered = verdict != "refuse"
        predicted = int(scored.batch.predicted[row]) if answered else None
        confidence = scores["confidence"] if answered else None
        raised = tuple(k for k, v in flags.items() if v)
        return Verdict(verdict, source, predicted, confidence, scores, raised, tuple(reasons), *ids)

    def _incident(self, state: SourceState, reasons: list[str]) -> str:
        incident = state.incident
        verdict = self.policy.incident_verdict(incident.severity if incident else None)
        if incident is not None and verdict != "allow":
            reasons.append(
                f"{incident.status} {incident.severity} incident {incident.id} on the source"
            )
        return verdict

    @staticmethod
    def _override(state: SourceState, verdict: str, reasons: list[str]) -> str:
        order = state.override
        if order is None:
            return verdict
        reasons.append(
            f"source on {order.action} by {order.actor}"
            + (f" ({order.note})" if order.note else "")
        )
        return order.action

    def _unfit(
        self, source: str, ids: tuple[str, str | None], state: SourceState, why: str
    ) -> Verdict:
        reasons = [f"input does not fit the model: {why}"]
        self._override(state, "refuse", reasons)
        return Verdict("refuse", source, None, None, {}, (), tuple(reasons), *ids)

    def _unreadable(self, row: Any, why: str) -> Verdict:
        """A refusal for a row that could not be read, published as the client sent it (the
        ingester dead-letters it under the source it named, when that is readable)."""
        from monitor.guard.publish import raw_record
        from monitor.guard.rows import row_source

        source, client_id = row_source(row)
        verdict = Verdict(
            "refuse",
            source,
            None,
            None,
            {},
            (),
            (f"unreadable request: {why}",),
            unique_id(client_id),
            client_id,
        )
        if self.publisher is not None:
            self.publisher.publish_batch([raw_record(self.ref, row, verdict, utcnow())])
        return verdict

    def _records(
        self, images: Sequence[torch.Tensor] | torch.Tensor, verdicts: list[Verdict], ts: datetime
    ) -> list[dict[str, Any]]:
        from monitor.guard.publish import production_record

        return [
            production_record(self.ref, image, v, ts, self.guarded_version)
            for image, v in zip(images, verdicts, strict=True)
        ]

    def _warn_missing_tiers(self, calibration: Any) -> None:
        from monitor.guard.policy import TIER_FLAGS

        if calibration is None:
            log.warning(
                "guard: %s has no detector calibration: %s by policy.",
                self.ref,
                self.policy.uncalibrated,
            )
            return
        t = calibration.thresholds
        present = {"low_confidence", "squeeze_suspicious"}
        if t.combined is not None:
            present.add("combined_suspicious")
            if t.combined.strong is not None:
                present.add("strong_suspicious")
        for tier in (self.policy.refuse, self.policy.review):
            flag = TIER_FLAGS[tier]
            if flag is not None and flag not in present:
                log.warning(
                    "guard: calibration %s of %s has no %s tier: it flags nothing.",
                    calibration.id,
                    self.ref,
                    tier,
                )
