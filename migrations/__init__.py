"""Alembic migrations of the robmon database (one revision per schema change)."""
