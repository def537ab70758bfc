"""Payment accounts, point applications, registrations and account replacements."""

from __future__ import annotations

from django.db import models

from mynapoint.audit.models import Channel
from mynapoint.identity.models import Resident


class Measure(models.TextChoices):
    PREMIUM = "premium", "施策1"
    HEALTH_INSURANCE = "health_insurance", "施策2"
    PUBLIC_FUND = "public_fund", "施策3"


class PaymentAccount(models.Model):
    """A resident's account at a payment service (決済サービスID). One account serves one person only."""

    provider = models.ForeignKey("providers.Provider", on_delete=models.PROTECT, related_name="accounts")
    service_id = models.CharField(max_length=64)
    linked_resident = models.ForeignKey(
        Resident, null=True, blank=True, on_delete=models.PROTECT, related_name="linked_accounts"
    )
    linked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "service_id"], name="account_once")]

    @property
    def key(self) -> str:
        return f"{self.provider.key}/{self.service_id}"

    def __str__(self) -> str:
        return self.key


class ApplicationStatus(models.TextChoices):
    ACCEPTED = "accepted", "受付"
    REJECTED = "rejected", "不受理"
    VOIDED = "voided", "無効（重複）"


class HolderRole(models.TextChoices):
    SELF = "self", "本人"
    REPRESENTATIVE = "representative", "法定代理人"
    OTHER = "other", "他人"


class PointApplication(models.Model):
    """One point application (申込), decided once by the rules and recorded with its explanation."""

    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="applications")
    measure = models.CharField(max_length=20, choices=Measure.choices)
    account = models.ForeignKey(PaymentAccount, on_delete=models.PROTECT, related_name="applications")
    mode = models.CharField(max_length=10)
    holder_role = models.CharField(max_length=20, choices=HolderRole.choices)
    operated_by = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="+")
    present = models.JSONField(default=list)  # MyKey IDs of the people present
    channel = models.CharField(max_length=10, choices=Channel.choices)
    terminal = models.CharField(max_length=100, blank=True)
    actor = models.CharField(max_length=100)
    applied_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=ApplicationStatus.choices)
    rejection_code = models.CharField(max_length=60, blank=True)
    explanation_ja = models.TextField()
    explanation_en = models.TextField()
    parameter_edition = models.CharField(max_length=60)

    class Meta:
        ordering = ["applied_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["resident", "measure"],
                condition=models.Q(status="accepted"),
                name="one_accepted_application_per_measure",
            )
        ]


class HealthInsuranceRegistration(models.Model):
    """健康保険証利用登録, from the online qualification system feed (idempotent by its id)."""

    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="health_registrations")
    registered_at = models.DateTimeField()
    external_id = models.CharField(max_length=100, unique=True)
    source = models.CharField(max_length=60)
    recorded_at = models.DateTimeField()


class PublicFundRegistration(models.Model):
    """公金受取口座登録, with the holder name check of program.md §5."""

    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="public_fund_registrations")
    registered_at = models.DateTimeField()
    external_id = models.CharField(max_length=100, unique=True)
    source = models.CharField(max_length=60)
    bank_code = models.CharField(max_length=4)
    branch_code = models.CharField(max_length=3)
    account_type = models.CharField(max_length=1)
    account_number = models.CharField(max_length=7)
    holder_kana = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=ApplicationStatus.choices)
    rejection_code = models.CharField(max_length=60, blank=True)
    holder_checked = models.BooleanField(default=False)
    recorded_at = models.DateTimeField()


class AccountReplacement(models.Model):
    """A lost payment card replaced: the link and the cap carry over (§4)."""

    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="account_replacements")
    from_account = models.ForeignKey(PaymentAccount, on_delete=models.PROTECT, related_name="+")
    to_account = models.ForeignKey(PaymentAccount, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField()
    accepted = models.BooleanField()


class LinkStatus(models.TextChoices):
    """A link's state as its provider is told (``GET /links``)."""

    LINKED = "linked", "紐づけ中"
    VOIDED = "voided", "無効（重複）"
    STOPPED = "stopped", "紐づけ停止（死亡）"


class LinkEventKind(models.TextChoices):
    LINKED = "linked", "紐づけ"
    VOIDED = "voided", "無効（重複したマイキーIDの統合）"
    STOPPED = "stopped", "紐づけ停止（死亡）"
    MOVED = "moved", "カード再発行による移行"
    MERGED = "merged", "重複したマイキーIDの統合（別の利用者の仮名へ）"


class LinkEvent(models.Model):
    """One change of a link (an accepted point application) as its provider hears of it: appended, never
    changed (database triggers refuse updates and deletes). ``position`` is what the provider's cursor pages
    over (``GET /links``): per provider, increasing, and committed in that order (:class:`LinkSequence`), so a
    provider pulling from its last cursor sees every later change of a link it has already seen.

    Each event keeps the link's state after it: whose link it is (``resident``: her per-provider
    ``link_ref``), the account it is on, and its status."""

    provider = models.ForeignKey("providers.Provider", on_delete=models.PROTECT, related_name="+")
    position = models.BigIntegerField()
    application = models.ForeignKey(PointApplication, on_delete=models.PROTECT, related_name="link_events")
    kind = models.CharField(max_length=10, choices=LinkEventKind.choices)
    status = models.CharField(max_length=10, choices=LinkStatus.choices)
    resident = models.ForeignKey(Resident, on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey(PaymentAccount, on_delete=models.PROTECT, related_name="+")
    previous_account = models.ForeignKey(
        PaymentAccount, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    at = models.DateTimeField()  # when the platform recorded the change

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "position"], name="link_event_position_once")
        ]
        indexes = [models.Index(fields=["application", "position"])]


class LinkSequence(models.Model):
    """The last position given to a provider's link events. Its row is updated (and so locked until commit)
    by every transaction that appends a link event for the provider: their positions commit in order, and a
    cursor never passes a position that a transaction still open would take."""

    provider = models.OneToOneField(
        "providers.Provider", primary_key=True, on_delete=models.PROTECT, related_name="+"
    )
    last = models.BigIntegerField(default=0)
