"""Database helpers: append-only tables and set-based references enforced by triggers (for migrations), and
``COPY`` for the bulk paths."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from django.db import migrations

__all__ = [
    "append_only",
    "checked_references",
    "copy_rows",
    "put_back_sqlite_triggers",
    "rebuilding_on_sqlite",
    "set_aside_sqlite_triggers",
]


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


def append_only(
    *tables: tuple[str, str],
    function: str = "refuse_change",
    vendors: tuple[str, ...] = ("postgresql", "sqlite"),
) -> migrations.RunPython:
    """A migration operation that makes tables insert-only (updates, deletes and truncation refused).

    ``tables`` are ``(table, trigger_prefix)`` pairs; on PostgreSQL every trigger calls ``function``.
    ``vendors`` limits the databases it runs on (SQLite drops a table's triggers when a migration rebuilds it).
    """

    def forwards(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        if schema_editor.connection.vendor not in vendors:
            return
        for table, prefix in tables:
            for sql in _statements(table, prefix, function, schema_editor.connection.vendor)[0]:
                schema_editor.execute(sql)

    def backwards(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        if schema_editor.connection.vendor not in vendors:
            return
        for table, prefix in tables:
            for sql in _statements(table, prefix, function, schema_editor.connection.vendor)[1]:
                schema_editor.execute(sql)

    return migrations.RunPython(forwards, backwards)


# ------------------------------------------------------------------------------------ set-based references


Reference = tuple[tuple[str, ...], str, tuple[str, ...]]  # (child columns, parent table, parent columns)


def _pg_reference_statements(
    child: str, name: str, references: Sequence[Reference]
) -> tuple[list[str], list[str]]:
    create: list[str] = []
    drop: list[str] = []
    checks = []
    for columns, parent, keys in references:
        on = " AND ".join(f"p.{k} = n.{c}" for c, k in zip(columns, keys, strict=True))
        missing = f"SELECT 1 FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE {on})"  # noqa: S608 - names from migrations
        checks.append(
            f"IF EXISTS ({missing}) THEN RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', "
            f"MESSAGE = '{child}: ({', '.join(columns)}) not present in {parent}'; END IF;"
        )
    function = f"{name}_refs"
    create.append(
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$ "
        f"BEGIN {' '.join(checks)} RETURN NULL; END; $$ LANGUAGE plpgsql"
    )
    for verb in ("INSERT", "UPDATE"):
        trigger = f"{name}_{verb.lower()}_refs"
        create.append(
            f"CREATE TRIGGER {trigger} AFTER {verb} ON {child} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
        drop.append(f"DROP TRIGGER IF EXISTS {trigger} ON {child}")
    drop.append(f"DROP FUNCTION IF EXISTS {function}()")
    for index, (columns, parent, keys) in enumerate(references):
        function = f"{name}_keep_{index}"
        on = " AND ".join(f"c.{c} = g.{k}" for c, k in zip(columns, keys, strict=True))
        same = " AND ".join(f"p.{k} = g.{k}" for k in keys)
        # a deleted row, or an updated one whose key is gone, that a child row still names
        orphaned = (
            f"SELECT 1 FROM gone_rows g JOIN {child} c ON {on} "  # noqa: S608 - names from migrations
            f"WHERE TG_OP = 'DELETE' OR NOT EXISTS (SELECT 1 FROM {parent} p WHERE {same})"
        )
        create.append(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$ "
            f"BEGIN IF EXISTS ({orphaned}) THEN RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', "
            f"MESSAGE = '{parent}: still referenced from {child}'; END IF; RETURN NULL; END; $$ LANGUAGE plpgsql"
        )
        for verb in ("DELETE", "UPDATE"):
            trigger = f"{function}_{verb.lower()}"
            create.append(
                f"CREATE TRIGGER {trigger} AFTER {verb} ON {parent} REFERENCING OLD TABLE AS gone_rows "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
            drop.append(f"DROP TRIGGER IF EXISTS {trigger} ON {parent}")
        drop.append(f"DROP FUNCTION IF EXISTS {function}()")
    return create, drop


def _sqlite_reference_statements(
    child: str, name: str, references: Sequence[Reference]
) -> tuple[list[str], list[str]]:
    create: list[str] = []
    drop: list[str] = []
    for index, (columns, parent, keys) in enumerate(references):
        named = " AND ".join(f"{k} = NEW.{c}" for c, k in zip(columns, keys, strict=True))
        naming = " AND ".join(f"{c} = OLD.{k}" for c, k in zip(columns, keys, strict=True))
        shown = ", ".join(columns)
        missing = f"SELECT RAISE(ABORT, '{child}: ({shown}) not present in {parent}')"
        kept = f"SELECT RAISE(ABORT, '{parent}: still referenced from {child}')"  # noqa: S608 - names from migrations
        rekeyed = " OR ".join(f"NEW.{k} IS NOT OLD.{k}" for k in keys)
        absent = f"NOT EXISTS (SELECT 1 FROM {parent} WHERE {named})"  # noqa: S608 - names from migrations
        present = f"EXISTS (SELECT 1 FROM {child} WHERE {naming})"  # noqa: S608 - names from migrations
        for trigger, sql in (
            (f"{name}_{index}_insert", f"BEFORE INSERT ON {child} WHEN {absent} BEGIN {missing}; END"),
            (
                f"{name}_{index}_update",
                f"BEFORE UPDATE OF {shown} ON {child} WHEN {absent} BEGIN {missing}; END",
            ),
            (f"{name}_{index}_delete", f"BEFORE DELETE ON {parent} WHEN {present} BEGIN {kept}; END"),
            (
                f"{name}_{index}_rekey",
                f"BEFORE UPDATE OF {', '.join(keys)} ON {parent} WHEN ({rekeyed}) AND {present} BEGIN {kept}; END",
            ),
        ):
            create.append(f"CREATE TRIGGER IF NOT EXISTS {trigger} {sql}")  # again after a table rebuild
            drop.append(f"DROP TRIGGER IF EXISTS {trigger}")
    return create, drop


def _reference_statements(
    child: str, name: str, references: Sequence[Reference], vendor: str
) -> tuple[list[str], list[str]]:
    if vendor == "postgresql":
        return _pg_reference_statements(child, name, references)
    if vendor == "sqlite":
        return _sqlite_reference_statements(child, name, references)
    return [], []


def checked_references(
    child: str,
    references: Sequence[Reference],
    *,
    name: str,
    vendors: tuple[str, ...] = ("postgresql", "sqlite"),
    remove: bool = False,
) -> migrations.RunPython:
    """A migration operation that enforces references of a bulk-loaded table set by set instead of row by row.

    A foreign key checks every inserted row with its own query at commit (about 10 µs a row on PostgreSQL:
    half the cost of loading 10,000 transactions). For the tables the provider API and the grant engine
    load in bulk, the same guarantee is given by triggers instead: on PostgreSQL an AFTER INSERT / UPDATE
    trigger per *statement* (also for COPY) checks all new rows in one anti-join against the parent, and an
    AFTER DELETE / UPDATE trigger on the parent refuses to remove a row that is still referenced; on SQLite
    (row triggers only) the same checks run per row. ``references`` are ``(child columns, parent table,
    parent columns)``; several columns check them together (a transaction's account must belong to the
    transaction's provider). Violations are integrity errors, as a foreign key's. The model field says
    ``db_constraint=False`` (docs/decisions/0003, Q13).

    On SQLite, a migration that alters the child or a parent table (Django rebuilds it; SQLite refuses to
    rename a table that a trigger names) puts :func:`rebuilding_on_sqlite` around its operations. On
    PostgreSQL a parent row deleted by one transaction while another inserts a child naming it is not caught
    (a foreign key would lock the parent row): no use case deletes these parents (decision Q13).
    ``tests/integration/test_references.py`` checks every reference on both databases after all migrations."""
    step = 1 if remove else 0

    def forwards(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        if schema_editor.connection.vendor not in vendors:
            return
        for sql in _reference_statements(child, name, references, schema_editor.connection.vendor)[step]:
            schema_editor.execute(sql)

    def backwards(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        if schema_editor.connection.vendor not in vendors:
            return
        for sql in _reference_statements(child, name, references, schema_editor.connection.vendor)[1 - step]:
            schema_editor.execute(sql)

    return migrations.RunPython(forwards, backwards)


# ------------------------------------------------------------------------------------------------ COPY


def copy_rows(
    cursor: Any, table: str, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[object]]
) -> None:
    """Load rows into ``table`` with PostgreSQL's ``COPY … FROM STDIN`` on a psycopg ``cursor``.

    ``columns`` are ``(column, database type)`` pairs, the type as Django's ``field.db_type()`` gives it. The
    rows go in psycopg's binary format with the types declared once (about twice as fast as letting psycopg
    find a dumper for every value); a table with a JSON column goes in text format (binary ``jsonb`` wants
    its own framing), as the values come."""
    names = ", ".join(name for name, _ in columns)
    types = [kind.partition("(")[0].strip() for _, kind in columns]
    binary = not any(kind.startswith("json") for kind in types)
    statement = f"COPY {table} ({names}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
    with cursor.copy(statement) as copy:
        if binary:
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)


# ------------------------------------------------------------------------- SQLite table rebuilds

IN_LIST_MAX: Final = 900  # values in one IN (…): under SQLite's smallest limit on a statement's parameters
_SET_ASIDE = "mynapoint_triggers_set_aside"


def set_aside_sqlite_triggers(cursor: Any, tables: Sequence[str]) -> list[str]:
    """Drop, and keep in a table of their own, the SQLite triggers that name any of ``tables``: the table's
    own triggers and other tables' triggers that refer to it (a reference check, say). SQLite cannot rename a
    table that a trigger names, which is how Django's schema editor alters a table (rebuild, drop, rename).
    Returns the names set aside; :func:`put_back_sqlite_triggers` creates them again."""
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {_SET_ASIDE} (name TEXT PRIMARY KEY, sql TEXT NOT NULL)")
    cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    named = [
        (name, sql)
        for name, sql in cursor.fetchall()
        if any(re.search(rf"\b{re.escape(table)}\b", sql) for table in tables)
    ]
    for name, sql in named:
        cursor.execute(f"INSERT OR REPLACE INTO {_SET_ASIDE} (name, sql) VALUES (?, ?)", (name, sql))  # noqa: S608
        cursor.execute(f'DROP TRIGGER "{name}"')
    return [name for name, _ in named]


def put_back_sqlite_triggers(cursor: Any) -> list[str]:
    """Create again the triggers :func:`set_aside_sqlite_triggers` set aside; returns their names."""
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {_SET_ASIDE} (name TEXT PRIMARY KEY, sql TEXT NOT NULL)")
    cursor.execute(f"SELECT name, sql FROM {_SET_ASIDE} ORDER BY name")  # noqa: S608
    kept = cursor.fetchall()
    for _, sql in kept:
        cursor.execute(sql)
    cursor.execute(f"DROP TABLE {_SET_ASIDE}")
    return [name for name, _ in kept]


def rebuilding_on_sqlite(*tables: str) -> tuple[migrations.RunPython, migrations.RunPython]:
    """Two migration operations to put around operations that alter ``tables`` (SQLite rebuilds them):
    ``before, after = rebuilding_on_sqlite("applications_paymentaccount")`` then
    ``operations = [before, migrations.AlterField(...), after]``. Nothing happens on PostgreSQL, which alters
    tables in place and keeps their triggers."""

    def aside(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        if schema_editor.connection.vendor == "sqlite":
            with schema_editor.connection.cursor() as cursor:
                set_aside_sqlite_triggers(cursor, tables)

    def back(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - RunPython signature
        if schema_editor.connection.vendor == "sqlite":
            with schema_editor.connection.cursor() as cursor:
                put_back_sqlite_triggers(cursor)

    return migrations.RunPython(aside, back), migrations.RunPython(back, aside)
