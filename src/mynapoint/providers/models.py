"""Providers and the transactions they report."""

from __future__ import annotations

from django.db import models


class ProviderKind(models.TextChoices):
    QR = "qr", "QRコード決済"
    EMONEY = "emoney", "電子マネー"
    CREDIT = "credit", "クレジットカード"
    DEBIT = "debit", "デビットカード"
    PREPAID = "prepaid", "プリペイドカード"


class GrantSchedule(models.TextChoices):
    IMMEDIATE = "immediate", "即時"
    MONTHLY = "monthly", "翌月の指定日"
    DAYS_AFTER = "days_after", "取引からN日後"


class Provider(models.Model):
    key = models.SlugField(max_length=40, unique=True)
    name_ja = models.CharField(max_length=100)
    name_en = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=10, choices=ProviderKind.choices)
    modes = models.JSONField(default=list)  # ["charge", "purchase"]
    measures = models.JSONField(default=list)  # measures it accepts applications for
    charge_deadline = models.DateField(null=True, blank=True)
    application_deadline = models.DateField(null=True, blank=True)
    security_code_count = models.PositiveSmallIntegerField(default=1)
    pre_registration_required = models.BooleanField(default=False)
    # when grants are due: immediately, on day N of the next month, or N days after the transaction
    grant_schedule = models.CharField(
        max_length=12, choices=GrantSchedule.choices, default=GrantSchedule.IMMEDIATE
    )
    grant_schedule_days = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class TransactionKind(models.TextChoices):
    CHARGE = "charge", "チャージ"
    PURCHASE = "purchase", "お買い物"


class ProviderTransaction(models.Model):
    """A charge or purchase on a payment account, reported by its provider (idempotent by provider txid)."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT)
    txid = models.CharField(max_length=100)
    account = models.ForeignKey(
        "applications.PaymentAccount", on_delete=models.PROTECT, related_name="transactions"
    )
    kind = models.CharField(max_length=10, choices=TransactionKind.choices)
    amount = models.PositiveIntegerField()
    at = models.DateTimeField()
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "txid"], name="transaction_once")]
        indexes = [models.Index(fields=["account", "at"])]


class ProviderRefund(models.Model):
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT)
    refund_id = models.CharField(max_length=100)
    transaction = models.ForeignKey(ProviderTransaction, on_delete=models.PROTECT, related_name="refunds")
    amount = models.PositiveIntegerField()
    at = models.DateTimeField()
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "refund_id"], name="refund_once")]
