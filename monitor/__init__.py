"""Robustness Monitor: adversarial audits, production input monitoring, alerts, release gates.

Importing ``monitor`` (or ``monitor.attacks`` / ``monitor.detect``) pulls in neither MLflow nor
the database: those load only where they are used.
"""

__version__ = "0.1.0"
