"""Fixtures for the platform integration tests live in support.py (importable by the tests).

A test marked ``postgres(why)`` needs PostgreSQL: the SQLite pass deselects it (``-m 'not postgres'``, see the
Makefile); run on another database it fails, naming what it needs, rather than skipping."""

import pytest
from django.db import connection
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


@pytest.fixture(autouse=True)
def _needs_postgres(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("postgres")
    if marker is not None and connection.vendor != "postgresql":
        pytest.fail(
            f"needs PostgreSQL: {marker.args[0]} — it runs in the PostgreSQL pass (make test-postgres, with "
            "MYNAPOINT_DATABASE_URL); the SQLite pass deselects it with -m 'not postgres'"
        )
