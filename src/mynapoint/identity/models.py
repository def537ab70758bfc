"""Residents, keyed by their MyKey ID, and the certificates that log them in. No My Number, ever."""

from __future__ import annotations

from django.db import models


class Resident(models.Model):
    """A resident of the programme. The MyKey ID is the key; the facts come from feeds or the resident."""

    mykey_id = models.CharField("マイキーID", max_length=8, unique=True)
    created_at = models.DateTimeField()
    # declared by the resident (needed for the minor rules and the account holder checks)
    born = models.DateField("生年月日", null=True, blank=True)
    kana = models.CharField("氏名（カナ）", max_length=100, blank=True)
    # card facts (J-LIS feed, or the demo data): when the card was applied for and received
    card_applied = models.DateField("カード申請日", null=True, blank=True)
    card_applied_online = models.BooleanField("オンライン申請", default=False)
    card_issued = models.DateField("カード受取日", null=True, blank=True)
    died = models.DateField("死亡日", null=True, blank=True)
    legal_representative = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="wards",
        verbose_name="法定代理人",
    )
    # phase 1 (マイナポイント第1弾) history, from the phase-1 records
    phase1_applied = models.DateField(null=True, blank=True)
    phase1_account = models.CharField(max_length=200, blank=True)
    phase1_points = models.PositiveIntegerField(null=True, blank=True)
    phase1_mode = models.CharField(max_length=10, blank=True)
    # a duplicate made by a certificate renewal that was not yet known, merged into the original
    merged_into = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.mykey_id


class Certificate(models.Model):
    """A user-authentication certificate (利用者証明用電子証明書), by issuer and serial."""

    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="certificates")
    issuer = models.CharField(max_length=400)
    serial = models.CharField(max_length=100)  # colon-separated hex: never a run of digits
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    first_seen_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    renewed_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "serial"], name="certificate_issuer_serial")]

    def __str__(self) -> str:
        return f"{self.issuer}#{self.serial}"


class CertificateRenewal(models.Model):
    """A renewal notice (old serial → new serial). Applying it keeps the same MyKey ID."""

    old_issuer = models.CharField(max_length=400)
    old_serial = models.CharField(max_length=100)
    new_issuer = models.CharField(max_length=400)
    new_serial = models.CharField(max_length=100)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["old_issuer", "old_serial", "new_issuer", "new_serial"], name="renewal_once"
            ),
            models.UniqueConstraint(fields=["new_issuer", "new_serial"], name="renewal_new_once"),
        ]


class LoginNonce(models.Model):
    """A single-use login challenge."""

    value = models.CharField(max_length=64, unique=True)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)


class OidcSubject(models.Model):
    """An OpenID Connect subject (the 認証アプリ route) mapped to the same resident as the card."""

    issuer = models.CharField(max_length=400)
    sub = models.CharField(max_length=255)
    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="oidc_subjects")
    first_seen_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "sub"], name="oidc_issuer_sub")]
