"""A posting's entry and account: checked set by set, not row by row (bulk-posted)."""

import django.db.models.deletion
from django.db import migrations, models

from mynapoint.dbutil import append_only, checked_references


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0002_append_only"),
    ]

    operations = [
        migrations.AlterField(
            model_name="posting",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="postings",
                to="ledger.ledgeraccount",
            ),
        ),
        migrations.AlterField(
            model_name="posting",
            name="entry",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="postings",
                to="ledger.entry",
            ),
        ),
        checked_references(
            "ledger_posting",
            [(("entry_id",), "ledger_entry", ("id",)), (("account_id",), "ledger_ledgeraccount", ("id",))],
            name="posting",
        ),
        # SQLite rebuilt the table to alter it, and its append-only triggers went with the old one
        append_only(("ledger_posting", "ledger_posting"), function="ledger_append_only", vendors=("sqlite",)),
    ]
