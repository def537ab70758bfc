"""The sandbox provider's own books. Nothing here refers to a platform model: the platform is reached over
HTTP only, and these tables would live in the provider's own database in real life."""

from __future__ import annotations

from django.db import models


class Shop(models.Model):
    """A demo shop (加盟店) where wallets pay."""

    code = models.SlugField(max_length=40, unique=True)
    name_ja = models.CharField(max_length=100)
    name_en = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"{self.code} {self.name_ja}"


class Wallet(models.Model):
    """A customer's wallet: the service ID and security code she gives the platform when she applies, the
    holder the platform compares with her profile, a yen balance (charged, spent) and a points balance (granted
    by the programme, spent at shops). ``points_balance`` may go below zero after a claw-back of points already
    spent (the provider then holds a claim on the customer)."""

    service_id = models.CharField(max_length=64, unique=True)
    security_code = models.CharField(max_length=16)
    holder_kana = models.CharField(max_length=100)
    holder_born = models.DateField(null=True, blank=True)
    yen_balance = models.BigIntegerField(default=0)
    points_balance = models.BigIntegerField(default=0)
    opened_at = models.DateTimeField()
    # when the platform last accepted the wallet as a valid account (PUT /accounts); null: not yet
    declared_at = models.DateTimeField(null=True, blank=True)
    declare_error = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(yen_balance__gte=0), name="sandbox_yen_not_negative")
        ]

    def __str__(self) -> str:
        return self.service_id


class TransactionKind(models.TextChoices):
    CHARGE = "charge", "チャージ"
    PURCHASE = "purchase", "お買い物"


class SandboxTransaction(models.Model):
    """A charge (``yen`` into the wallet) or a purchase at a shop (price ``yen``, of which ``points_used`` paid
    with points and the rest from the yen balance). Reported to the platform with ``POST /transactions`` under
    ``txid``; ``reported_at`` stays null until the platform recorded it (retried, idempotently, until then). A
    purchase paid entirely with points moves no money and is not reported."""

    txid = models.CharField(max_length=100, unique=True)
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="transactions")
    kind = models.CharField(max_length=10, choices=TransactionKind.choices)
    shop = models.ForeignKey(Shop, null=True, blank=True, on_delete=models.PROTECT, related_name="purchases")
    yen = models.PositiveIntegerField()
    points_used = models.PositiveIntegerField(default=0)
    at = models.DateTimeField()
    reported_at = models.DateTimeField(null=True, blank=True)
    report_error = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["reported_at", "id"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(points_used__lte=models.F("yen")), name="sandbox_points_within_price"
            )
        ]

    @property
    def yen_from_balance(self) -> int:
        return self.yen - self.points_used

    def __str__(self) -> str:
        return self.txid


class GrantSource(models.TextChoices):
    WEBHOOK = "webhook", "プッシュ（webhook）"
    PULL = "pull", "取得（GET /grants）"


class ReceivedGrant(models.Model):
    """A grant instruction the platform pushed or the sandbox pulled (or a claw-back, ``amount`` < 0).
    ``grant_id`` is unique: a grant delivered twice, by webhook or by pull or both, credits the points once;
    ``via`` says how it came first. ``acknowledged_at`` is set once ``POST /grants/ack`` succeeded; until then
    the acknowledgement is retried."""

    grant_id = models.PositiveBigIntegerField(unique=True)
    via = models.CharField(max_length=10, choices=GrantSource.choices, default=GrantSource.WEBHOOK)
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="grants")
    measure = models.CharField(max_length=20)
    amount = models.IntegerField()
    link_ref = models.CharField(max_length=64)
    received_at = models.DateTimeField()
    reference = models.CharField(max_length=100)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    ack_error = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"grant {self.grant_id}: {self.amount:+}"


class PullCursor(models.Model):
    """How far the sandbox has applied a cursor-paged feed of the provider API (``feed`` ``grants``:
    ``GET /grants``): ``after`` is the cursor to pull from next. It only moves forward, and only past what has
    been applied."""

    feed = models.CharField(max_length=20, unique=True)
    after = models.BigIntegerField(default=0)
    pulled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.feed} after {self.after}"
