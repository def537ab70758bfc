"""Claims of the providers on the programme: monthly (概算払) and final (精算).

A claim is computed from the ledger as a draft, then fixed. When it is fixed, the ledger postings it settles
are written down as its items; a posting is settled by at most one claim (unique), so nothing is claimed
twice, and whatever no fixed claim holds (for instance a claw-back acknowledged after its month was fixed)
falls into the final settlement. A fixed claim, its lines and its items are never changed: database
triggers refuse it (migration 0002). Points are yen: ``amount`` is what the programme owes the provider,
negative when the provider must pay back.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class ClaimKind(models.TextChoices):
    MONTHLY = "monthly", "概算払（月次）"
    FINAL = "final", "精算"


class ClaimStatus(models.TextChoices):
    DRAFT = "draft", "下書き"
    FIXED = "fixed", "確定"


class Claim(models.Model):
    provider = models.ForeignKey("providers.Provider", on_delete=models.PROTECT, related_name="claims")
    kind = models.CharField(max_length=10, choices=ClaimKind.choices)
    # monthly: the month claimed (its first day); final: the month the settlement was computed in
    period = models.DateField()
    through = models.DateField()  # the last JST day of acknowledgements it takes in
    status = models.CharField(max_length=10, choices=ClaimStatus.choices, default=ClaimStatus.DRAFT)
    # what it claims: acknowledged grants less acknowledged claw-backs (magnitudes), all in points = yen
    grant_count = models.PositiveIntegerField(default=0)
    granted_points = models.BigIntegerField(default=0)
    clawback_count = models.PositiveIntegerField(default=0)
    clawback_points = models.BigIntegerField(default=0)
    amount = models.BigIntegerField(default=0)
    # the ledger when it was computed: everything acknowledged for the provider through `through`, and what
    # fixed claims had already taken of it
    acknowledged_total = models.BigIntegerField(default=0)
    claimed_before = models.BigIntegerField(default=0)
    digest = models.CharField(max_length=64)  # sha256 of what it settles (selectors.claim_digest)
    computed_at = models.DateTimeField()
    computed_by = models.CharField(max_length=200)
    fixed_at = models.DateTimeField(null=True, blank=True)
    fixed_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["provider_id", "period", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "period"],
                condition=Q(kind="monthly", status="fixed"),
                name="settlement_one_fixed_monthly_claim",
            ),
            models.UniqueConstraint(
                fields=["provider", "period"],
                condition=Q(kind="monthly", status="draft"),
                name="settlement_one_draft_monthly_claim",
            ),
            models.UniqueConstraint(
                fields=["provider"],
                condition=Q(kind="final", status="draft"),
                name="settlement_one_draft_final_settlement",
            ),
            models.CheckConstraint(
                condition=Q(amount=F("granted_points") - F("clawback_points")),
                name="settlement_claim_amount_adds_up",
            ),
            models.CheckConstraint(
                condition=Q(status="draft", fixed_at__isnull=True)
                | Q(status="fixed", fixed_at__isnull=False),
                name="settlement_claim_fixed_at_iff_fixed",
            ),
        ]

    def __str__(self) -> str:
        return f"claim #{self.pk} {self.kind} {self.period:%Y-%m} ({self.status})"


class ClaimLine(models.Model):
    """One measure of one month in a claim. A final settlement has a line per month and measure; ``late``
    marks a month whose monthly claim was already fixed (postings dated into it afterwards)."""

    claim = models.ForeignKey(Claim, on_delete=models.CASCADE, related_name="lines")
    period = models.DateField()  # the month the acknowledgements are dated in (first day)
    measure = models.CharField(max_length=20)
    grant_count = models.PositiveIntegerField(default=0)
    granted_points = models.BigIntegerField(default=0)
    clawback_count = models.PositiveIntegerField(default=0)
    clawback_points = models.BigIntegerField(default=0)
    amount = models.BigIntegerField(default=0)
    late = models.BooleanField(default=False)

    class Meta:
        ordering = ["claim_id", "period", "measure"]
        constraints = [
            models.UniqueConstraint(fields=["claim", "period", "measure"], name="settlement_line_once"),
            models.CheckConstraint(
                condition=Q(amount=F("granted_points") - F("clawback_points")),
                name="settlement_line_amount_adds_up",
            ),
        ]


class ClaimItem(models.Model):
    """One ledger posting (points moved from the provider's payable to a resident) settled by a fixed claim.
    Written when the claim is fixed, never changed; a posting is settled once."""

    claim = models.ForeignKey(Claim, on_delete=models.PROTECT, related_name="items")
    posting = models.OneToOneField("ledger.Posting", on_delete=models.PROTECT, related_name="+")
    grant = models.ForeignKey(
        "grants.Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    measure = models.CharField(max_length=20)
    amount = models.BigIntegerField()
    effective_date = models.DateField()

    class Meta:
        ordering = ["claim_id", "posting_id"]
