"""Sign-in checks that resist guessing: backoff per user and per address, the same hash work
for unknown users, and a bounded number of password hashes at once.

- ``Backoff``: after ``free`` consecutive failures of a key, the key is locked for ``base``
  seconds, doubling with every further failure up to ``cap``; a success clears the user's key.
  While locked, even the right password is refused (``TooManyAttempts``).
- ``PasswordChecks``: scrypt costs ~100 ms of CPU on purpose. At most ``workers`` checks run at
  once and at most ``queue`` more wait; any further sign-in is refused at once (``SignInBusy``)
  instead of holding one of the server's threads, so pages and /healthz keep being served.
- ``SignIn.verify``: the order of the checks above, one hash per attempt whether the user exists
  or not (an unknown user is checked against a dummy hash), so timing does not tell who exists.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from werkzeug.security import check_password_hash, generate_password_hash

ADDRESS_FACTOR = 4  # an address (a NAT, a proxy) may hold several users' failures
MAX_KEYS = 10_000  # failure counters kept; the oldest are forgotten first


class TooManyAttempts(Exception):
    """Raised for a sign-in while its user or address is locked out."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many attempts, try again in {retry_after} s.")
        self.retry_after = retry_after


class SignInBusy(Exception):
    """Raised when more sign-ins are waiting for a password check than the queue holds."""

    retry_after = 1

    def __init__(self) -> None:
        super().__init__("The server is busy checking other sign-ins; try again in a moment.")


@dataclass
class _Failures:
    count: int
    last: float


class Backoff:
    """Consecutive failures per key and the lockout they earn (thread-safe, bounded memory)."""

    def __init__(
        self,
        free: int = 5,
        base: float = 5.0,
        cap: float = 300.0,
        forget_after: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.forget_after = max(forget_after, cap)
        self.clock = clock
        self._failures: OrderedDict[object, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: object, free: int | None = None) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        with self._lock:
            entry = self._current(key)
            if entry is None:
                return 0.0
            return max(0.0, entry.last + self._lockout(entry.count, free) - self.clock())

    def failed(self, key: object) -> None:
        with self._lock:
            entry = self._current(key) or _Failures(0, 0.0)
            entry.count += 1
            entry.last = self.clock()
            self._failures[key] = entry
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, key: object) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _current(self, key: object) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is not None and self.clock() - entry.last > self.forget_after:
            del self._failures[key]
            return None
        return entry

    def _lockout(self, count: int, free: int | None) -> float:
        allowed = self.free if free is None else free
        if count < allowed:
            return 0.0
        return min(self.cap, self.base * 2 ** min(count - allowed, 32))


class PasswordChecks:
    """Password hash checks, ``workers`` at a time with ``queue`` more waiting; counted."""

    def __init__(self, workers: int = 1, queue: int = 4) -> None:
        self._slots = threading.BoundedSemaphore(workers)
        self._admitted = threading.BoundedSemaphore(workers + queue)
        self._lock = threading.Lock()
        self.count = 0  # hashes checked since start (tests, benchmarks/signin.py)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Holds a worker slot; raises ``SignInBusy`` at once when the queue is full."""
        if not self._admitted.acquire(blocking=False):
            raise SignInBusy()
        try:
            with self._slots:
                yield
        finally:
            self._admitted.release()

    def check(self, password_hash: str, password: str) -> bool:
        """One hash check; call inside ``slot()``."""
        with self._lock:
            self.count += 1
        return check_password_hash(password_hash, password)


class SignIn:
    """Decides sign-in attempts: lockouts first, then one bounded password check."""

    def __init__(
        self, backoff: Backoff, checks: PasswordChecks, dummy_hash: str | None = None
    ) -> None:
        self.backoff, self.checks = backoff, checks
        # a hash of a random password, with the default method: what an unknown user costs
        self.dummy_hash = dummy_hash or generate_password_hash(str(time.time_ns()))

    def verify(self, name: str, password_hash: str | None, password: str, address: str) -> bool:
        """Whether ``password`` is right for user ``name`` (``password_hash`` None: unknown
        user); raises ``TooManyAttempts`` or ``SignInBusy`` instead of checking."""
        keys = (("user", name), ("address", address))
        self._refuse_if_locked(keys)
        with self.checks.slot():
            self._refuse_if_locked(keys)  # failures recorded while this one waited
            right = self.checks.check(password_hash or self.dummy_hash, password)
        ok = right and password_hash is not None
        if ok:
            self.backoff.succeeded(keys[0])
        else:
            for key in keys:
                self.backoff.failed(key)
        return ok

    def _refuse_if_locked(self, keys: tuple[tuple[str, str], tuple[str, str]]) -> None:
        wait = max(
            self.backoff.wait(keys[0]),
            self.backoff.wait(keys[1], free=self.backoff.free * ADDRESS_FACTOR),
        )
        if wait > 0:
            raise TooManyAttempts(math.ceil(wait))
