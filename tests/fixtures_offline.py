"""Fixtures for the offline tests (session-scoped where building is costly)."""
