from __future__ import annotations

from django.apps import AppConfig


class ApplicationsConfig(AppConfig):
    name = "mynapoint.applications"
    label = "applications"
    verbose_name = "ポイント申込"
