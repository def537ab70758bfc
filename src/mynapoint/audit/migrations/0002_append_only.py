"""The audit log is append-only in the database itself: updates and deletes are refused by triggers."""

from __future__ import annotations

from django.db import migrations

from mynapoint.dbutil import append_only


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [append_only(("audit_auditevent", "audit_event"), function="audit_append_only")]
