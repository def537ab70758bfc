"""Fixtures for the platform integration tests live in support.py (importable by the tests)."""

from support import (  # noqa: F401 - fixtures are found by name
    _platform_settings,
    flushable,
    make_card,
    make_resident,
    providers,
    registry,
    test_ca,
    trust_dir,
)
