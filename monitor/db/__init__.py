"""The database: typed models (the one schema), sessions and migrations."""
