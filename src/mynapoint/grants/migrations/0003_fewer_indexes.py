"""Fewer indexes to maintain when grants are instructed in bulk: none on the instruction entry (never looked up
from the grant), and the acknowledgement entry indexed only where it is set."""

import django.db.models.deletion
from django.db import migrations, models

from mynapoint.dbutil import checked_references

REFERENCES = [
    (("resident_id",), "identity_resident", ("id",)),
    (("provider_id",), "providers_provider", ("id",)),
    (("account_id",), "applications_paymentaccount", ("id",)),
    (("instruction_entry_id",), "ledger_entry", ("id",)),
]


class Migration(migrations.Migration):
    dependencies = [
        ("applications", "0003_link_events"),
        ("grants", "0002_grant_references_set_based"),
        ("identity", "0001_initial"),
        ("ledger", "0003_posting_references_set_based"),
        ("providers", "0004_transaction_references_set_based"),
    ]

    operations = [
        # SQLite rebuilds the table to alter it: its reference triggers (and the parents' ones, which name it)
        # go first and come back after
        checked_references("grants_grant", REFERENCES, name="grant", vendors=("sqlite",), remove=True),
        migrations.AlterField(
            model_name="grant",
            name="acknowledgement_entry",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="ledger.entry",
            ),
        ),
        migrations.AlterField(
            model_name="grant",
            name="instruction_entry",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="ledger.entry",
            ),
        ),
        migrations.AddIndex(
            model_name="grant",
            index=models.Index(
                condition=models.Q(("acknowledgement_entry__isnull", False)),
                fields=["acknowledgement_entry"],
                name="grant_acknowledged_by",
            ),
        ),
        checked_references("grants_grant", REFERENCES, name="grant", vendors=("sqlite",)),
    ]
