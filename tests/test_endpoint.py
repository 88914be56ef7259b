"""Endpoint classifiers against a real ``mlflow models serve`` process on 127.0.0.1.

The served model is a scikit-learn logistic regression on the 8×8 digits (flat features),
logged with ``pyfunc_predict_fn="predict_proba"`` into a temporary SQLite-backed MLflow store by
a separate Python process (the tracking URI of this test process is left alone). Redirects and
overloaded servers are played by a small standard-library HTTP front that forwards to the real
scoring server. Tests needing the server are skipped, with the server's last log lines as the
reason, when it cannot start here.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from monitor.datasets import load_dataset
from monitor.endpoint import (
    EndpointClient,
    endpoint_classifier,
    endpoint_name,
    endpoint_url,
    parse_predictions,
)
from monitor.errors import EndpointError
from tests.serving import free_port, serve_model, serving_env

MODEL_NAME = "digits-logreg-served"

LOG_MODEL = """
import pickle, sys
from pathlib import Path
import mlflow, mlflow.sklearn, sklearn
from mlflow.models import infer_signature

root = Path(sys.argv[1])
model, example = pickle.loads((root / "model.pkl").read_bytes())
mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
experiment = mlflow.create_experiment("served", artifact_location=(root / "artifacts").as_uri())
with mlflow.start_run(experiment_id=experiment):
    mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(example, model.predict_proba(example)),
        pyfunc_predict_fn="predict_proba",
        registered_model_name=sys.argv[2],
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
"""


@dataclass
class Served:
    url: str  # the server root, e.g. http://127.0.0.1:PORT
    model: LogisticRegression
    images: torch.Tensor  # 50 test digits, N×1×8×8 in [0, 1]
    start_seconds: float


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A digits logistic regression behind ``mlflow models serve`` (killed at the end)."""
    root = tmp_path_factory.mktemp("endpoint")
    train = load_dataset("digits", "train")
    x_train = train.x.reshape(len(train), -1).numpy()
    model = LogisticRegression(max_iter=1000).fit(x_train, train.y.numpy())
    (root / "model.pkl").write_bytes(pickle.dumps((model, x_train[:5])))
    env = serving_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    logged = subprocess.run(
        [sys.executable, "-c", LOG_MODEL, str(root), MODEL_NAME],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if logged.returncode != 0:
        pytest.skip(f"could not log the model to serve: {logged.stderr.strip()[-300:]}")

    with serve_model(f"models:/{MODEL_NAME}/1", env, root / "serve.log") as (url, seconds):
        test = load_dataset("digits", "test")
        yield Served(url, model, test.x[:50], seconds)


def local_probabilities(served: Served) -> np.ndarray:
    return served.model.predict_proba(served.images.reshape(len(served.images), -1).numpy())


def test_probabilities_equal_the_local_model(served: Served) -> None:
    model = endpoint_classifier(served.url, layout="flat")
    probs = model.probabilities(served.images)
    assert probs is not None and probs.dtype == torch.float32 and probs.shape == (50, 10)
    np.testing.assert_allclose(probs.numpy(), local_probabilities(served), atol=1e-5)
    assert model.outputs == "probabilities" and model.kind == "endpoint"
    assert model.name == f"{served.url.removeprefix('http://')}/invocations"
    expected = local_probabilities(served).argmax(axis=1)
    assert model.labels(served.images).tolist() == expected.tolist()


def test_requests_follow_the_batch_size(served: Served) -> None:
    model = endpoint_classifier(served.url, layout="flat", batch_size=16)
    model.probabilities(served.images)
    client = model.predict_fn
    assert isinstance(client, EndpointClient)
    assert (client.requests, client.queries) == (4, 50)  # 16 + 16 + 16 + 2 rows


def test_rate_limit_holds_on_the_wall_clock(served: Served) -> None:
    model = endpoint_classifier(served.url, layout="flat", batch_size=1, rate_limit=10.0)
    started = time.monotonic()
    model.labels(served.images[:5])
    assert time.monotonic() - started >= 0.4  # five requests, 0.1 s apart
    assert model.predict_fn.requests == 5


def test_unreachable_server_is_one_error_after_bounded_retries() -> None:
    model = endpoint_classifier(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(EndpointError, match=r"unreachable \(Connection refused\) after 2 attempts"):
        model.labels(torch.zeros(3, 1, 8, 8))
    assert model.predict_fn.requests == 2


def test_wrong_path_is_an_http_error(served: Served) -> None:
    model = endpoint_classifier(f"{served.url}/nope", layout="flat")
    with pytest.raises(EndpointError, match="answered HTTP 404: Not Found") as info:
        model.labels(served.images)
    assert "\n" not in str(info.value)
    assert model.predict_fn.requests == 1  # a 404 is not retried


def test_schema_mismatch_names_mlflows_reason(served: Served) -> None:
    model = endpoint_classifier(served.url, layout="nchw")  # the model takes flat features
    with pytest.raises(EndpointError, match=r"HTTP 400: INVALID_PARAMETER_VALUE: Shape of input"):
        model.probabilities(served.images[:2])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/invocations",
        "127.0.0.1:5001",
        "http://",
        "http://u:pw@host/",
        "http://h:x/",
    ],
)
def test_bad_urls_are_one_sentence(url: str) -> None:
    with pytest.raises(EndpointError) as info:
        endpoint_classifier(url)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_urls_and_names() -> None:
    assert endpoint_url("http://127.0.0.1:5001") == "http://127.0.0.1:5001/invocations"
    assert endpoint_url("https://scoring.example/") == "https://scoring.example/invocations"
    assert endpoint_url("http://h:1/models/digits/invocations?x=1") == (
        "http://h:1/models/digits/invocations?x=1"
    )
    assert endpoint_name("https://scoring.example/invocations") == "scoring.example:443/invocations"


class Front(BaseHTTPRequestHandler):
    """Plays a proxy before the scoring server: answers from ``script`` in order, then forwards."""

    script: list[tuple[int, dict[str, str]]]
    target: str

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.script:
            status, headers = self.script.pop(0)
            self.send_response(status)
            for key, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(key, value)
            self.end_headers()
            return
        request = urllib.request.Request(
            self.target, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def front(served: Served, script: list[tuple[int, dict[str, str]]]) -> Iterator[str]:
    handler = type(
        "ScriptedFront", (Front,), {"script": script, "target": f"{served.url}/invocations"}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_overloaded_server_is_retried(served: Served) -> None:
    script = [(503, {"Retry-After": "0"}), (429, {})]
    with front(served, script) as url:
        model = endpoint_classifier(url, layout="flat", backoff=0.01)
        probs = model.probabilities(served.images[:8])
    assert probs is not None
    np.testing.assert_allclose(probs.numpy(), local_probabilities(served)[:8], atol=1e-5)
    assert (model.predict_fn.requests, model.predict_fn.queries) == (3, 24)


def test_server_errors_stop_after_the_retries(served: Served) -> None:
    with front(served, [(502, {})] * 3) as url:
        model = endpoint_classifier(url, layout="flat", retries=2, backoff=0.01)
        with pytest.raises(EndpointError, match="answered HTTP 502 after 3 attempts"):
            model.labels(served.images[:4])


def test_redirects_are_not_followed(served: Served) -> None:
    with front(served, [(307, {"Location": f"{served.url}/invocations"})]) as url:
        model = endpoint_classifier(url, layout="flat")
        with pytest.raises(EndpointError, match=r"HTTP 307, a redirect to .*not follow redirects"):
            model.labels(served.images[:4])
    assert model.predict_fn.requests == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"predictions": [[0.25, 0.75], [1.0, 0.0]]}', [[0.25, 0.75], [1.0, 0.0]]),
        (b'{"predictions": [3, 5]}', [3, 5]),  # predict: labels
        (b'{"predictions": [{"0": 0.25, "1": 0.75}, {"0": 1, "1": 0}]}', [[0.25, 0.75], [1, 0]]),
        (b'{"predictions": [{"label": 3}, {"label": 5}]}', [3, 5]),
        (b'{"predictions": {"0": [0.25, 1.0], "1": [0.75, 0.0]}}', [[0.25, 0.75], [1.0, 0.0]]),
        (b'{"predictions": {"probabilities": [[0.25, 0.75], [1, 0]]}}', [[0.25, 0.75], [1, 0]]),
        (b"[[0.25, 0.75], [1.0, 0.0]]", [[0.25, 0.75], [1.0, 0.0]]),  # MLflow 1: a bare list
    ],
)
def test_answers_mlflow_writes_are_parsed(body: bytes, expected: list) -> None:
    np.testing.assert_array_equal(parse_predictions(body, 2, "u"), np.asarray(expected, float))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>busy</html>", "not JSON: '<html>busy</html>'"),
        (b'{"predictions": [1, 2, 3]}', "3 predictions for 2 inputs"),
        (b'{"predictions": ["cat", "dog"]}', "not a table of numbers"),
        (b'{"predictions": [[0.5, 0.5], [0.5]]}', "not a table of numbers"),
        (b'{"predictions": [NaN, 1]}', "NaN or infinite"),
        (b'{"predictions": [[[1, 0]], [[0, 1]]]}', "shaped 2×1×2"),
        (b'{"outputs": [1, 2]}', "without predictions \\(got outputs\\)"),
    ],
)
def test_unusable_answers_are_one_sentence(body: bytes, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        parse_predictions(body, 2, "http://h:1/invocations")


def exact_linf_robust(model: LogisticRegression, x: np.ndarray, y: np.ndarray, eps: float):
    """Per sample: robust to every L∞ perturbation of size eps inside [0, 1] (closed form for a
    linear model: each rival class's worst case is taken coordinate by coordinate)."""
    w, b = model.coef_, model.intercept_
    lo, hi = np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)
    robust = model.predict(x) == y
    for i in np.nonzero(robust)[0]:
        diff = w[y[i]] - w  # K×D: true class minus each rival
        worst = np.where(diff > 0, lo[i], hi[i])  # the point that hurts each pair most
        margins = (diff * worst).sum(axis=1) + b[y[i]] - b
        margins[y[i]] = np.inf
        robust[i] = margins.min() > 0
    return robust


def test_robmon_audits_a_served_model_by_queries(served: Served, home, robmon) -> None:
    """`robmon audit --endpoint`: Square through HTTP, never below the closed form of the
    linear model's robust accuracy (that would be a counting bug) and close above it."""
    result = robmon(
        "audit", "--endpoint", served.url, "--dataset", "digits", "--layout", "flat",
        "--eps", "0.1", "--limit", "60", "--queries", "400", "--query-batch", "64", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["model"] == {"name": served.url.removeprefix("http://") + "/invocations",
                             "version": "endpoint"}  # fmt: skip
    [row] = data["results"]
    assert (row["threat"], row["attack"], row["steps"]) == ("query", "square", 400)
    digits = load_dataset("digits")
    x, y = digits.x[:60].reshape(60, -1).numpy(), digits.y[:60].numpy()
    exact = float(exact_linf_robust(served.model, x, y, 0.1).mean())
    assert exact - 1e-9 <= row["robust_accuracy"] <= exact + 0.1, (row, exact)
    assert row["queries"]["budget"] == 400 and row["queries"]["max"] <= 400
    shown = robmon("audits", "show", str(data["audit_id"]), "--json").json()
    assert shown["results"] == data["results"]
    again = robmon(
        "audit", "--endpoint", served.url, "--dataset", "digits", "--layout", "flat",
        "--eps", "0.1", "--limit", "60", "--queries", "400", "--json",
    ).json()  # fmt: skip
    assert again["reused"] is True


def test_endpoint_audit_errors_are_one_sentence(home, robmon) -> None:
    result = robmon("audit", "--endpoint", "ftp://example.invalid/x", "--dataset", "digits")
    assert result.code == 1 and "must start with http:// or https://" in result.stderr
    result = robmon("audit", "--endpoint", "http://127.0.0.1:9/invocations")
    assert result.code == 1 and "--endpoint needs --dataset" in result.stderr
    result = robmon("audit")
    assert result.code == 1 and "--endpoint URL" in result.stderr
    assert "Traceback" not in result.stderr
