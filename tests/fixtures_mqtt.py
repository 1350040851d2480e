"""Fixtures for the mqtt tests (session-scoped where building is costly)."""
