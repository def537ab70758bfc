"""A transaction's account must be its provider's: checked set by set, not row by row (bulk-loaded)."""

import django.db.models.deletion
from django.db import migrations, models

from mynapoint.dbutil import checked_references


class Migration(migrations.Migration):
    dependencies = [
        ("applications", "0002_initial"),
        ("providers", "0003_provider_active_provider_grant_delivery_and_more"),
    ]

    operations = [
        migrations.AlterField(
            model_name="providertransaction",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="transactions",
                to="applications.paymentaccount",
            ),
        ),
        migrations.AlterField(
            model_name="providertransaction",
            name="provider",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                to="providers.provider",
            ),
        ),
        checked_references(
            "providers_providertransaction",
            [(("account_id", "provider_id"), "applications_paymentaccount", ("id", "provider_id"))],
            name="provider_tx",
        ),
    ]
