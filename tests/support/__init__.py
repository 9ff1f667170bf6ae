"""Helpers shared by the tests of every layer (fixtures live in tests/conftest.py)."""
