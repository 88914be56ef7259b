"""Per-source alerts: rate tests and probing detection over scored inputs, the alert lifecycle
with its audit trail, and webhook notifications through an outbox."""
