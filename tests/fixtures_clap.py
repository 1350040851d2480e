"""Fixtures for the clap tests (session-scoped where building is costly)."""
