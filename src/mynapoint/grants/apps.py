from __future__ import annotations

from django.apps import AppConfig


class GrantsConfig(AppConfig):
    name = "mynapoint.grants"
    label = "grants"
    verbose_name = "ポイント付与"
