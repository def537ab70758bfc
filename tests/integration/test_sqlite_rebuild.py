"""SQLite alters a table by rebuilding it (new table, copy, drop, rename), and refuses to rename a table that
a trigger names. The set-based reference checks name their parent tables, so a migration that alters a parent
(or the child) sets those triggers aside and puts them back (dbutil.rebuilding_on_sqlite). Shown here on a
plain SQLite database with the project's own reference triggers."""

from __future__ import annotations

import sqlite3

import pytest

from mynapoint.dbutil import _sqlite_reference_statements, put_back_sqlite_triggers, set_aside_sqlite_triggers

REFERENCES = [(("account_id", "provider_id"), "account", ("id", "provider_id"))]


@pytest.fixture
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(
        "CREATE TABLE account (id INTEGER PRIMARY KEY, provider_id INTEGER NOT NULL, service_id TEXT)"
    )
    conn.execute("CREATE TABLE tx (id INTEGER PRIMARY KEY, account_id INTEGER, provider_id INTEGER)")
    for sql in _sqlite_reference_statements("tx", "tx", REFERENCES)[0]:
        conn.execute(sql)
    conn.execute("INSERT INTO account VALUES (1, 7, 'S1')")
    conn.execute("INSERT INTO tx VALUES (1, 1, 7)")
    return conn


def _rebuild_account(conn: sqlite3.Connection) -> None:
    """What Django's SQLite schema editor does to alter a column of ``account``."""
    conn.execute(
        "CREATE TABLE new__account (id INTEGER PRIMARY KEY, provider_id INTEGER NOT NULL, service_id TEXT)"
    )
    conn.execute("INSERT INTO new__account SELECT * FROM account")
    conn.execute("DROP TABLE account")
    conn.execute("ALTER TABLE new__account RENAME TO account")


def test_rebuilding_a_parent_fails_while_the_triggers_name_it(db: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.OperationalError, match="error in trigger"):
        _rebuild_account(db)


def test_set_aside_and_put_back_around_a_rebuild_keeps_every_check(db: sqlite3.Connection) -> None:
    cursor = db.cursor()
    aside = set_aside_sqlite_triggers(cursor, ["account"])
    assert len(aside) == 4  # the child's insert and update checks, the parent's delete and re-key checks
    _rebuild_account(db)
    assert sorted(put_back_sqlite_triggers(cursor)) == sorted(aside)
    with pytest.raises(sqlite3.IntegrityError, match="not present in account"):
        db.execute("INSERT INTO tx VALUES (2, 1, 8)")  # another provider's account
    with pytest.raises(sqlite3.IntegrityError, match="still referenced"):
        db.execute("DELETE FROM account WHERE id = 1")
    db.execute("INSERT INTO tx VALUES (3, 1, 7)")
    assert db.execute("SELECT count(*) FROM tx").fetchone() == (2,)
