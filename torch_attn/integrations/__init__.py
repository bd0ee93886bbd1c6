"""Integrations with model libraries (each imported on demand; none is a dependency)."""
