"""Models served over HTTP by MLflow's scoring server (``mlflow models serve``): black boxes
that robmon can only query (``robmon audit --endpoint URL``: query-based attacks only).

An endpoint is a ``BlackBoxClassifier`` whose predict function is an ``EndpointClient``: the
classifier turns pixels into the model's input and splits them into requests of ``batch_size``
rows; the client posts each batch as ``{"inputs": [...]}`` to ``/invocations`` (MLflow 2/3
scoring protocol, tensor input) and reads ``{"predictions": ...}`` back. The client waits out its
rate limit on the wall clock, retries connection errors, 429 and 5xx a bounded number of times,
counts the requests and queries it sent, and never follows a redirect. Every failure is one
``EndpointError`` sentence. Only the standard library speaks HTTP here.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from monitor.classifiers import BlackBoxClassifier
from monitor.contracts import InputContract
from monitor.errors import EndpointError, quoted

log = logging.getLogger(__name__)

LAYOUTS = ("nchw", "nhwc", "flat")
INVOCATIONS = "/invocations"
DEFAULT_BATCH_SIZE = 256
RETRY_AFTER_LIMIT = 30.0  # seconds: a longer Retry-After is cut to this
DETAIL_LIMIT = 200  # characters of an error body that a message quotes


def endpoint_url(url: str) -> str:
    """The scoring URL of ``url``: http or https only, ``/invocations`` added to a server root."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(
            f"endpoint URL {quoted(url)} must start with http:// or https:// and name a host "
            "(e.g. http://127.0.0.1:5001/invocations)."
        )
    if parts.username is not None:
        raise EndpointError(f"endpoint URL {quoted(url)} must not carry a user name or password.")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise EndpointError(f"endpoint URL {quoted(url)} has an invalid port.") from None
    path = parts.path if parts.path not in ("", "/") else INVOCATIONS
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def endpoint_name(url: str) -> str:
    """``host:port/path`` of a scoring URL, the name audits and reports show."""
    parts = urllib.parse.urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}{parts.path}"


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer becomes an HTTPError: a scoring server that moved is the user's decision."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> None:
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


@dataclass
class EndpointClient:
    """Posts batches to a scoring URL; called as a ``BlackBoxClassifier``'s predict function.

    ``rate_limit``: requests per second (None: unlimited), kept as a minimum interval between
    requests on ``time.monotonic`` (wall clock, never record time). ``timeout``: seconds per
    request. ``retries``: further attempts after a connection error, 429 or 5xx, waiting
    ``backoff``·2^attempt seconds (or the server's Retry-After, at most 30 s). ``requests`` and
    ``queries`` count what was sent, retries included: what the server has seen.
    """

    url: str
    rate_limit: float | None = None
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    requests: int = 0
    queries: int = 0
    _next_request: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = endpoint_url(self.url)
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise EndpointError(f"the rate limit must be positive, not {self.rate_limit}.")
        if not self.timeout > 0:
            raise EndpointError(f"the request timeout must be positive, not {self.timeout}.")
        if self.retries < 0 or self.backoff < 0:
            raise EndpointError("retries and their backoff cannot be negative.")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Predictions for one batch in one request: N×K scores or N labels (float64)."""
        body = orjson.dumps(
            {"inputs": np.ascontiguousarray(batch)}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        return parse_predictions(self._post(body, len(batch)), len(batch), self.url)

    def _post(self, body: bytes, rows: int) -> bytes:
        """The answer's body; retried as the class says, else one EndpointError."""
        attempt = 0
        while True:
            self._wait_for_slot()
            self.requests += 1
            self.queries += rows
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                if not (err.code == 429 or err.code >= 500) or attempt == self.retries:
                    raise EndpointError(http_error_message(self.url, err, attempt + 1)) from None
                delay = _retry_after(err) or self.backoff * 2**attempt
                problem = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                problem = _reason(err, self.timeout)
                if attempt == self.retries:
                    raise EndpointError(
                        f"endpoint {self.url} is unreachable ({problem}) "
                        f"after {_attempts(attempt + 1)}."
                    ) from None
                delay = self.backoff * 2**attempt
            log.info("endpoint %s: %s; retrying in %.1f s", self.url, problem, delay)
            time.sleep(delay)
            attempt += 1

    def _wait_for_slot(self) -> None:
        """Sleep until the rate limit allows the next request."""
        if self.rate_limit is None:
            return
        now = time.monotonic()
        if self._next_request > now:
            time.sleep(self._next_request - now)
            now = self._next_request
        self._next_request = now + 1.0 / self.rate_limit


def endpoint_classifier(
    url: str,
    *,
    layout: str = "nchw",
    contract: InputContract | None = None,
    dtype: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rate_limit: float | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    input_shape: tuple[int, ...] | None = None,
    name: str | None = None,
) -> BlackBoxClassifier:
    """A query-only classifier (kind ``endpoint``) for a model behind ``mlflow models serve``.

    ``layout`` as for ``BlackBoxClassifier`` (``flat``: one row of C·H·W features per image);
    ``batch_size`` rows per request; ``dtype`` of the payload (uint8 when the contract's scale
    is, else float32). The classifier's ``predict_fn`` is its ``EndpointClient`` (counters).
    """
    if layout not in LAYOUTS:
        raise EndpointError(f"layout must be {', '.join(LAYOUTS)}, not {layout!r}.")
    if batch_size < 1:
        raise EndpointError(f"the batch size must be at least 1, not {batch_size}.")
    contract = contract or InputContract()
    client = EndpointClient(
        url, rate_limit=rate_limit, timeout=timeout, retries=retries, backoff=backoff
    )
    return BlackBoxClassifier(
        name=name or endpoint_name(client.url),
        predict_fn=client,
        layout=layout,
        dtype=np.dtype(dtype or ("uint8" if contract.scale == "uint8" else "float32")),
        kind="endpoint",
        batch_size=batch_size,
        input_shape=input_shape,
        contract=contract,
    )


def parse_predictions(body: bytes, rows: int, url: str) -> np.ndarray:
    """``rows`` predictions (N×K scores or N labels, float64) from a scoring server's answer.

    MLflow writes ``{"predictions": P}``: P is a list of lists for a numpy result
    (scikit-learn ``predict_proba``, torch logits), a list of numbers for labels, a list of
    records for a DataFrame, an object of columns for a dict of arrays. A bare list (MLflow 1)
    is read as P.
    """
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EndpointError(
            f"endpoint {url} answered something that is not JSON: {_excerpt(body)}."
        ) from None
    if isinstance(answer, dict) and "predictions" in answer:
        predictions = answer["predictions"]
    elif isinstance(answer, list):
        predictions = answer
    else:
        keys = ", ".join(sorted(answer)) if isinstance(answer, dict) else type(answer).__name__
        raise EndpointError(f"endpoint {url} answered without predictions (got {keys}).")
    try:
        array = np.asarray(_table(predictions), dtype=np.float64)
    except (ValueError, TypeError):
        raise EndpointError(
            f"endpoint {url} answered predictions that are not a table of numbers: "
            f"{_excerpt(json.dumps(predictions).encode())}."
        ) from None
    if array.ndim not in (1, 2):
        raise EndpointError(
            f"endpoint {url} answered predictions shaped {'×'.join(map(str, array.shape))}, "
            "not N×classes scores or N labels."
        )
    if len(array) != rows:
        raise EndpointError(f"endpoint {url} answered {len(array)} predictions for {rows} inputs.")
    if not np.isfinite(array).all():
        raise EndpointError(f"endpoint {url} answered predictions that are NaN or infinite.")
    return array


def _table(predictions: Any) -> Any:
    """Rows of numbers out of the shapes MLflow serialises results to."""
    if isinstance(predictions, dict):
        columns = list(predictions.values())
        if len(columns) == 1:
            return _table(columns[0])
        return list(zip(*columns, strict=True))  # columns of one value per row
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        records = [list(r.values()) if isinstance(r, dict) else r for r in predictions]
        return [r[0] if len(r) == 1 else r for r in records]
    return predictions


def http_error_message(url: str, err: urllib.error.HTTPError, attempts: int) -> str:
    """One sentence for an HTTP error answer: a redirect, or the status with its detail."""
    if 300 <= err.code < 400:
        target = err.headers.get("Location", "somewhere else")
        return (
            f"endpoint {url} answered HTTP {err.code}, a redirect to {quoted(target)}; robmon "
            "does not follow redirects: pass the URL it names if you trust it."
        )
    after = f" after {_attempts(attempts)}" if attempts > 1 else ""
    detail = _error_detail(err)
    return f"endpoint {url} answered HTTP {err.code}{after}: {detail}."


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The first line of an error body; of an MLflow error, its innermost ``Error:`` part."""
    try:
        body = err.read(64 * 1024)
    except (OSError, http.client.HTTPException):
        body = b""
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message") or answer.get("detail"), str):
        text = answer.get("message") or answer["detail"]
        text = text.rsplit("Error: ", 1)[-1]
        code = answer.get("error_code")
        text = f"{code}: {text}" if isinstance(code, str) else text
    else:
        text = body.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = (lines[0] if lines else err.reason or "no detail").rstrip(".")
    return line if len(line) <= DETAIL_LIMIT else line[: DETAIL_LIMIT - 1] + "…"


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """Seconds a 429/503 answer asks to wait (a number of seconds only), at most 30."""
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return min(seconds, RETRY_AFTER_LIMIT) if seconds >= 0 else None


def _reason(err: BaseException, timeout: float) -> str:
    """Why a connection failed, in a few words."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


def _excerpt(body: bytes) -> str:
    lines = body.decode("utf-8", errors="replace").strip().splitlines()
    return quoted(lines[0] if lines else "")
