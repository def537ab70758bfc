"""The audit log. Rows are only inserted (by audit.services.record); database triggers refuse updates and
deletes, and each row carries the hash of the one before it."""

from __future__ import annotations

from django.db import models


class Channel(models.TextChoices):
    SELF = "self", "本人"
    DESK = "desk", "支援窓口"
    SPOT = "spot", "手続きスポット"
    FEED = "feed", "連携データ"
    OFFICE = "office", "事務局"
    SYSTEM = "system", "システム"


class AuditEvent(models.Model):
    at = models.DateTimeField()
    actor = models.CharField(max_length=200)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    terminal = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=60)
    subject_type = models.CharField(max_length=60)
    subject_id = models.CharField(max_length=500)
    before = models.JSONField(null=True)
    after = models.JSONField(null=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["subject_type", "subject_id"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.subject_type}:{self.subject_id} by {self.actor}"


class AuditHead(models.Model):
    """One row: the end of the chain. Locking it serialises appends, so the chain never forks."""

    last_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64)
