"""Sign-in cost and its effect on the rest of the dashboard, over real HTTP.

    OMP_NUM_THREADS=1 python benchmarks/signin.py [--seconds 10] [--concurrent 16]

Serves the dashboard as `robmon dashboard` does (waitress, 8 threads) from a temporary
ROBMON_HOME, in a process of its own, then prints:

- /healthz latency (p50, p95) idle, and while ``--concurrent`` clients sign in back to back,
  first waiting a second after a 503 (people), then retrying at once (a flood: what it costs
  is then the requests themselves, as with any flood, not the password hashes);
- what those sign-ins were answered (302 signed in, 503 refused while the queue was full);
- the time of a wrong-password sign-in for a known user and for an unknown one (one password
  hash each: the difference is noise, so timing does not tell who exists).

Lockouts are switched off here (``signin_free_failures`` very large) so that every attempt reaches
the password check; tests/dashboards/test_auth.py checks the lockouts themselves.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import table

PASSWORD = "benchmark-secret"


def serve(home: Path, ports: multiprocessing.Queue) -> None:
    """The dashboard on a free port (waitress, 8 threads), in a process of its own so that the
    benchmark's clients do not share its interpreter lock; puts its port on ``ports``."""
    from waitress.server import create_server

    from dashboards.app import create_app
    from dashboards.auth import save_user
    from monitor.config import load_settings

    logging.getLogger("dashboards").setLevel(logging.ERROR)  # one line per failed sign-in
    os.environ["ROBMON_HOME"] = str(home)
    settings = load_settings()
    settings = replace(settings, tables={"dashboard": {"signin_free_failures": 10**9}})
    save_user(settings, "ana", PASSWORD, "triager")
    server = create_server(create_app(settings).server, host="127.0.0.1", port=0, threads=8)
    ports.put(server.effective_port)
    server.run()


def latencies(url: str, count: int) -> list[float]:
    import requests

    times = []
    for _ in range(count):
        start = time.perf_counter()
        requests.get(url, timeout=60).raise_for_status()
        times.append(time.perf_counter() - start)
        time.sleep(0.05)
    return times


def sign_in(base: str, user: str, password: str) -> tuple[int, float]:
    """(status, seconds) of one sign-in from a fresh browser session."""
    import requests

    session = requests.Session()
    session.get(f"{base}/login", timeout=60)
    form = {"user": user, "password": password, "csrf": session.cookies["_csrf_token"]}
    start = time.perf_counter()
    status = session.post(f"{base}/login", data=form, allow_redirects=False, timeout=60)
    return status.status_code, time.perf_counter() - start


def under_load(
    base: str, clients: int, seconds: float, polite: bool
) -> tuple[list[float], Counter]:
    """/healthz latencies while ``clients`` threads sign in back to back (``polite``: waiting
    the Retry-After second after a 503, as a person would; else at once, as a flood would)."""
    stop, answers, lock = threading.Event(), Counter(), threading.Lock()

    def client() -> None:
        while not stop.is_set():
            status, _ = sign_in(base, "ana", PASSWORD)
            with lock:
                answers[status] += 1
            if status == 503 and polite:
                stop.wait(1.0)  # the Retry-After a browser's user would wait

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # every client is signing in
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        times += latencies(f"{base}/healthz", 1)
    stop.set()
    for thread in threads:
        thread.join()
    return times, answers


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--attempts", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ports: multiprocessing.Queue = multiprocessing.Queue()
        process = multiprocessing.Process(target=serve, args=(Path(tmp) / ".robmon", ports))
        process.start()
        base = f"http://127.0.0.1:{ports.get(timeout=120)}"
        latencies(f"{base}/healthz", 3)  # MLflow's store is opened on the first check
        idle = latencies(f"{base}/healthz", 60)
        polite, polite_answers = under_load(base, args.concurrent, args.seconds, polite=True)
        loaded, answers = under_load(base, args.concurrent, args.seconds, polite=False)
        known = [sign_in(base, "ana", "wrong-password")[1] for _ in range(args.attempts)]
        unknown = [sign_in(base, "nobody", "wrong-password")[1] for _ in range(args.attempts)]
        process.terminate()
        process.join()
    rows = [
        ("/healthz idle", len(idle), ms(idle, 0.5), ms(idle, 0.95)),
        (f"/healthz, {args.concurrent} signing in", len(polite), ms(polite, 0.5), ms(polite, 0.95)),
        (f"/healthz, {args.concurrent} flooding", len(loaded), ms(loaded, 0.5), ms(loaded, 0.95)),
        ("sign-in, known user, wrong password", len(known), ms(known, 0.5), ms(known, 0.95)),
        ("sign-in, unknown user", len(unknown), ms(unknown, 0.5), ms(unknown, 0.95)),
    ]
    print(table(rows, ("request", "n", "p50 ms", "p95 ms")))
    for name, times in (("signing in", polite), ("flooding", loaded)):
        ratio = statistics.median(times) / statistics.median(idle)
        print(f"/healthz p50 with {args.concurrent} {name} / idle: {ratio:.1f}x")
    parity = statistics.median(unknown) / statistics.median(known)
    print(f"unknown / known user sign-in p50: {parity:.2f}")
    for name, counts in (("signing in", polite_answers), ("flooding", answers)):
        print(f"sign-ins answered, {name}: {dict(sorted(counts.items()))} (503: queue full)")


if __name__ == "__main__":
    main()
