"""Robustness audits: run attacks against a registry model, check the numbers, store them."""
