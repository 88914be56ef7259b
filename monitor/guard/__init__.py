"""The inline guard: allow, review or refuse each request before the model answers
(``Guard.check``), a guarded pyfunc for the registry (``guard.wrap``) and the source orders that
triagers give (``guard.sources``). Importable with torch, numpy and the database layer alone."""

from monitor.guard.guard import Guard, Verdict
from monitor.guard.policy import GuardPolicy

__all__ = ["Guard", "GuardPolicy", "Verdict"]
