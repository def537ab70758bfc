"""A fixed claim is never changed: its row, its lines and its items refuse updates and deletes (and no line or
item is added to it). Drafts stay editable. Items are only ever inserted (when their claim is fixed)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

_SQLITE = [
    """CREATE TRIGGER settlement_claim_fixed_no_update BEFORE UPDATE ON settlement_claim
       WHEN OLD.status = 'fixed' BEGIN SELECT RAISE(ABORT, 'a fixed claim is never changed'); END""",
    """CREATE TRIGGER settlement_claim_fixed_no_delete BEFORE DELETE ON settlement_claim
       WHEN OLD.status = 'fixed' BEGIN SELECT RAISE(ABORT, 'a fixed claim is never changed'); END""",
    """CREATE TRIGGER settlement_line_fixed_no_insert BEFORE INSERT ON settlement_claimline
       WHEN (SELECT status FROM settlement_claim WHERE id = NEW.claim_id) = 'fixed'
       BEGIN SELECT RAISE(ABORT, 'a fixed claim is never changed'); END""",
    """CREATE TRIGGER settlement_line_fixed_no_update BEFORE UPDATE ON settlement_claimline
       WHEN EXISTS (SELECT 1 FROM settlement_claim WHERE id IN (OLD.claim_id, NEW.claim_id) AND status = 'fixed')
       BEGIN SELECT RAISE(ABORT, 'a fixed claim is never changed'); END""",
    """CREATE TRIGGER settlement_line_fixed_no_delete BEFORE DELETE ON settlement_claimline
       WHEN (SELECT status FROM settlement_claim WHERE id = OLD.claim_id) = 'fixed'
       BEGIN SELECT RAISE(ABORT, 'a fixed claim is never changed'); END""",
    """CREATE TRIGGER settlement_item_fixed_no_insert BEFORE INSERT ON settlement_claimitem
       WHEN (SELECT status FROM settlement_claim WHERE id = NEW.claim_id) = 'fixed'
       BEGIN SELECT RAISE(ABORT, 'a fixed claim is never changed'); END""",
    """CREATE TRIGGER settlement_item_no_update BEFORE UPDATE ON settlement_claimitem
       BEGIN SELECT RAISE(ABORT, 'settlement_claimitem is append-only'); END""",
    """CREATE TRIGGER settlement_item_no_delete BEFORE DELETE ON settlement_claimitem
       BEGIN SELECT RAISE(ABORT, 'settlement_claimitem is append-only'); END""",
]
_SQLITE_DROP = [
    f"DROP TRIGGER IF EXISTS {name}"
    for name in (
        "settlement_claim_fixed_no_update",
        "settlement_claim_fixed_no_delete",
        "settlement_line_fixed_no_insert",
        "settlement_line_fixed_no_update",
        "settlement_line_fixed_no_delete",
        "settlement_item_fixed_no_insert",
        "settlement_item_no_update",
        "settlement_item_no_delete",
    )
]

_POSTGRES = [
    """CREATE OR REPLACE FUNCTION settlement_claim_guard() RETURNS trigger AS $$
       BEGIN
         IF OLD.status = 'fixed' THEN
           RAISE EXCEPTION USING MESSAGE = 'a fixed claim is never changed (settlement_claim ' || OLD.id || ')';
         END IF;
         IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
         RETURN NEW;
       END; $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER settlement_claim_guard BEFORE UPDATE OR DELETE ON settlement_claim
       FOR EACH ROW EXECUTE FUNCTION settlement_claim_guard()""",
    """CREATE OR REPLACE FUNCTION settlement_claim_part_guard() RETURNS trigger AS $$
       DECLARE
         touched bigint[];
       BEGIN
         IF TG_TABLE_NAME = 'settlement_claimitem' AND TG_OP <> 'INSERT' THEN
           RAISE EXCEPTION USING MESSAGE = 'settlement_claimitem is append-only';
         END IF;
         IF TG_OP = 'INSERT' THEN
           touched := ARRAY[NEW.claim_id];
         ELSIF TG_OP = 'UPDATE' THEN
           touched := ARRAY[OLD.claim_id, NEW.claim_id];
         ELSE
           touched := ARRAY[OLD.claim_id];
         END IF;
         IF EXISTS (SELECT 1 FROM settlement_claim WHERE id = ANY (touched) AND status = 'fixed') THEN
           RAISE EXCEPTION USING MESSAGE = 'a fixed claim is never changed (' || TG_TABLE_NAME || ')';
         END IF;
         IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
         RETURN NEW;
       END; $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER settlement_line_guard BEFORE INSERT OR UPDATE OR DELETE ON settlement_claimline
       FOR EACH ROW EXECUTE FUNCTION settlement_claim_part_guard()""",
    """CREATE TRIGGER settlement_item_guard BEFORE INSERT OR UPDATE OR DELETE ON settlement_claimitem
       FOR EACH ROW EXECUTE FUNCTION settlement_claim_part_guard()""",
]
_POSTGRES_DROP = [
    "DROP TRIGGER IF EXISTS settlement_claim_guard ON settlement_claim",
    "DROP TRIGGER IF EXISTS settlement_line_guard ON settlement_claimline",
    "DROP TRIGGER IF EXISTS settlement_item_guard ON settlement_claimitem",
    "DROP FUNCTION IF EXISTS settlement_claim_guard()",
    "DROP FUNCTION IF EXISTS settlement_claim_part_guard()",
]


def _run(statements: dict[str, list[str]]) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("settlement", "0001_initial")]
    operations = [
        migrations.RunPython(
            _run({"sqlite": _SQLITE, "postgresql": _POSTGRES}),
            _run({"sqlite": _SQLITE_DROP, "postgresql": _POSTGRES_DROP}),
        )
    ]
