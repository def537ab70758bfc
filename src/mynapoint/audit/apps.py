from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "mynapoint.audit"
    label = "audit"
    verbose_name = "監査ログ"
