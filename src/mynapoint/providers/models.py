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


class Verification(models.TextChoices):
    REGISTRY = "registry", "事業者が有効な口座を登録"
    CALLBACK = "callback", "事業者の照会APIに問い合わせ"


class GrantDelivery(models.TextChoices):
    PULL = "pull", "事業者が取得（カーソル）"
    PUSH = "push", "Webhookで通知"


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
    # how accounts are verified: the provider registers valid accounts with us, or we call its endpoint
    verification = models.CharField(
        max_length=10, choices=Verification.choices, default=Verification.REGISTRY
    )
    verify_url = models.URLField(blank=True)
    # how grant instructions and notices reach the provider: pulled with a cursor, or pushed as webhooks
    grant_delivery = models.CharField(
        max_length=10, choices=GrantDelivery.choices, default=GrantDelivery.PULL
    )
    webhook_url = models.URLField(blank=True)
    webhook_secret = models.CharField(max_length=100, blank=True)  # HMAC key for signing webhooks
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class TransactionKind(models.TextChoices):
    CHARGE = "charge", "チャージ"
    PURCHASE = "purchase", "お買い物"


class ProviderTransaction(models.Model):
    """A charge or purchase on a payment account, reported by its provider (idempotent by provider txid)."""

    # references checked set by set (dbutil.checked_references): the account must be the provider's; the
    # unique (provider, txid) and (account, at) indexes serve the lookups a plain foreign-key index would
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, db_constraint=False, db_index=False)
    txid = models.CharField(max_length=100)
    account = models.ForeignKey(
        "applications.PaymentAccount",
        on_delete=models.PROTECT,
        related_name="transactions",
        db_constraint=False,
        db_index=False,
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


class ProviderApiKey(models.Model):
    """A provider's API key. Only a hash is stored; the key is shown once when it is made."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="api_keys")
    prefix = models.CharField(max_length=12, unique=True)  # the first characters, to find the row
    key_hash = models.CharField(max_length=64)  # sha256 of the whole key
    created_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    label = models.CharField(max_length=100, blank=True)


class ProviderAccount(models.Model):
    """An account the provider declared valid (verification = registry). Security codes are stored hashed."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="declared_accounts")
    service_id = models.CharField(max_length=64)
    security_codes_hash = models.CharField(max_length=64)
    holder_kana = models.CharField(max_length=100)
    holder_born = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField()
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "service_id"], name="declared_account_once")
        ]
