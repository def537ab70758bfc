from __future__ import annotations

from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "mynapoint.ledger"
    label = "ledger"
    verbose_name = "ポイント元帳"
