from __future__ import annotations

import sqlite3
from typing import Any

from django.apps import AppConfig
from django.core import checks

SQLITE_AT_LEAST = (3, 35)  # RETURNING (ids of bulk inserts), UPDATE … FROM (acknowledgements in bulk)


def sqlite_new_enough(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:  # noqa: ARG001
    """The embedded database's SQLite must know what the ledger's bulk writes use."""
    from django.db import connections

    if not any(connections[alias].vendor == "sqlite" for alias in connections):
        return []
    if sqlite3.sqlite_version_info >= SQLITE_AT_LEAST:
        return []
    return [
        checks.Error(
            f"SQLite {sqlite3.sqlite_version} is too old: mynapoint needs SQLite "
            f"{'.'.join(map(str, SQLITE_AT_LEAST))} or newer (RETURNING, UPDATE … FROM)",
            hint="use a Python built with a newer SQLite, or PostgreSQL (MYNAPOINT_DATABASE_URL)",
            id="mynapoint.E001",
        )
    ]


class LedgerConfig(AppConfig):
    name = "mynapoint.ledger"
    label = "ledger"
    verbose_name = "ポイント元帳"

    def ready(self) -> None:
        checks.register(sqlite_new_enough, checks.Tags.database)
