"""A grant's resident, provider, account and instruction entry: checked set by set, not row by row (bulk-posted)."""

import django.db.models.deletion
from django.db import migrations, models

from mynapoint.dbutil import checked_references


class Migration(migrations.Migration):
    dependencies = [
        ("applications", "0002_initial"),
        ("grants", "0001_initial"),
        ("identity", "0001_initial"),
        ("ledger", "0003_posting_references_set_based"),
        ("providers", "0003_provider_active_provider_grant_delivery_and_more"),
    ]

    operations = [
        migrations.AlterField(
            model_name="grant",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="grants",
                to="applications.paymentaccount",
            ),
        ),
        migrations.AlterField(
            model_name="grant",
            name="instruction_entry",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="ledger.entry",
            ),
        ),
        migrations.AlterField(
            model_name="grant",
            name="provider",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="grants",
                to="providers.provider",
            ),
        ),
        migrations.AlterField(
            model_name="grant",
            name="resident",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="grants",
                to="identity.resident",
            ),
        ),
        checked_references(
            "grants_grant",
            [
                (("resident_id",), "identity_resident", ("id",)),
                (("provider_id",), "providers_provider", ("id",)),
                (("account_id",), "applications_paymentaccount", ("id",)),
                (("instruction_entry_id",), "ledger_entry", ("id",)),
            ],
            name="grant",
        ),
    ]
