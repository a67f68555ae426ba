"""Test kit shared by tests/ and bench/: project scaffolding, graded challenger
models, a real Prefect server on loopback. Not part of the installed package.

Tests import it as `kit` (pytest puts tests/ on sys.path); bench scripts put
the repository's tests/ folder on sys.path themselves.
"""
