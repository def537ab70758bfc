"""Database helpers shared by migrations: append-only tables enforced by triggers."""

from __future__ import annotations

from typing import Any

from django.db import migrations

__all__ = ["append_only"]


def _statements(table: str, prefix: str, function: str, vendor: str) -> tuple[list[str], list[str]]:
    message = f"{table} is append-only"
    if vendor == "sqlite":
        create = [
            f"CREATE TRIGGER {prefix}_no_update BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END",
            f"CREATE TRIGGER {prefix}_no_delete BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END",
        ]
        drop = [f"DROP TRIGGER IF EXISTS {prefix}_no_update", f"DROP TRIGGER IF EXISTS {prefix}_no_delete"]
        return create, drop
    if vendor == "postgresql":
        create = [
            f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$
                BEGIN RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only'; END; $$ LANGUAGE plpgsql""",
            f"""CREATE TRIGGER {prefix}_append_only BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {function}()""",
            f"""CREATE TRIGGER {prefix}_no_truncate BEFORE TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION {function}()""",
        ]
        drop = [
            f"DROP TRIGGER IF EXISTS {prefix}_append_only ON {table}",
            f"DROP TRIGGER IF EXISTS {prefix}_no_truncate ON {table}",
        ]
        return create, drop
    return [], []


def append_only(*tables: tuple[str, str], function: str = "refuse_change") -> migrations.RunPython:
    """A migration operation that makes tables insert-only (updates, deletes and truncation refused).

    ``tables`` are ``(table, trigger_prefix)`` pairs; on PostgreSQL every trigger calls ``function``.
    """

    def forwards(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        for table, prefix in tables:
            for sql in _statements(table, prefix, function, schema_editor.connection.vendor)[0]:
                schema_editor.execute(sql)

    def backwards(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        for table, prefix in tables:
            for sql in _statements(table, prefix, function, schema_editor.connection.vendor)[1]:
                schema_editor.execute(sql)

    return migrations.RunPython(forwards, backwards)
