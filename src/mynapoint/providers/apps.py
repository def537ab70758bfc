from __future__ import annotations

from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "mynapoint.providers"
    label = "providers"
    verbose_name = "決済事業者"
