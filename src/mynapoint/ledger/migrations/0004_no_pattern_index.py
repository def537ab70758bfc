"""No ``varchar_pattern_ops`` index on ``ledger_entry.idempotency_key`` (PostgreSQL).

Django adds one beside the unique index of every unique text column, for ``LIKE 'prefix%'`` queries; nothing
looks entries up by a key prefix, and a grant run inserts an entry per grant, each paying for every index.
Found by introspection (its name carries a hash); SQLite has none."""

from typing import Any

from django.db import migrations


def _pattern_indexes(schema_editor: Any) -> list[str]:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'ledger_entry' "
            "AND indexdef LIKE '%%(idempotency_key varchar_pattern_ops)%%'"
        )
        return [row[0] for row in cursor.fetchall()]


def forwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for name in _pattern_indexes(schema_editor):
            schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"')


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql" and not _pattern_indexes(schema_editor):
        schema_editor.execute(
            "CREATE INDEX ledger_entry_idempotency_key_like ON ledger_entry (idempotency_key varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0003_posting_references_set_based")]
    operations = [migrations.RunPython(forwards, backwards)]
