"""The test suite: a package, so its modules import helpers relatively (see pyproject.toml)."""
