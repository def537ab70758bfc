"""Ledger entries and postings are only ever inserted (corrections are new, reversing entries)."""

from __future__ import annotations

from django.db import migrations

from mynapoint.dbutil import append_only


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]
    operations = [
        append_only(
            ("ledger_entry", "ledger_entry"),
            ("ledger_posting", "ledger_posting"),
            function="ledger_append_only",
        )
    ]
