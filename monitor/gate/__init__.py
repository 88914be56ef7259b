"""The release gate: a policy (TOML), a decision on a model version's stored audits, a record of
every decision, and alias promotion / rollback through the registry."""
