from __future__ import annotations

from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "mynapoint.identity"
    label = "identity"
    verbose_name = "本人確認（マイキーID）"
