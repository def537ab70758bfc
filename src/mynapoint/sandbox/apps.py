from __future__ import annotations

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    name = "mynapoint.sandbox"
    label = "sandbox"
    verbose_name = "デモ決済（サンドボックス事業者）"
