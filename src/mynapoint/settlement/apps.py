from __future__ import annotations

from django.apps import AppConfig


class SettlementConfig(AppConfig):
    name = "mynapoint.settlement"
    label = "settlement"
    verbose_name = "精算"
