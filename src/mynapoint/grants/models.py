"""Grant instructions to providers (付与 and 付与取消) and the outbox that pushes them."""

from __future__ import annotations

from django.db import models


class GrantStatus(models.TextChoices):
    INSTRUCTED = "instructed", "付与指示済"
    ACKNOWLEDGED = "acknowledged", "付与完了"


class Grant(models.Model):
    """One change of a resident's points for a measure, instructed to the provider of her link.

    ``amount`` is positive for a grant and negative for a claw-back; ``cumulative_after`` is what the
    resident holds under the measure once it is done. ``(resident, measure, ordinal)`` is unique, which is
    what makes posting exactly-once when two runs or a restarted run meet."""

    # the references set at instruction are checked set by set (dbutil.checked_references); the unique
    # (resident, measure, ordinal) and (provider, position) indexes serve the lookups of resident and provider
    resident = models.ForeignKey(
        "identity.Resident",
        on_delete=models.PROTECT,
        related_name="grants",
        db_constraint=False,
        db_index=False,
    )
    measure = models.CharField(max_length=20)
    provider = models.ForeignKey(
        "providers.Provider",
        on_delete=models.PROTECT,
        related_name="grants",
        db_constraint=False,
        db_index=False,
    )
    account = models.ForeignKey(
        "applications.PaymentAccount", on_delete=models.PROTECT, related_name="grants", db_constraint=False
    )
    ordinal = models.PositiveIntegerField()
    amount = models.IntegerField()
    cumulative_after = models.IntegerField()
    due_as_of = models.DateField()  # the JST day the entitlement was computed for
    instructed_at = models.DateTimeField()
    # no index: entries are never looked up from here (and never deleted: the ledger is append-only)
    instruction_entry = models.ForeignKey(
        "ledger.Entry", on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    status = models.CharField(max_length=12, choices=GrantStatus.choices, default=GrantStatus.INSTRUCTED)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledgement_entry = (
        models.ForeignKey(  # indexed where set only (Meta): instructed grants cost no entry
            "ledger.Entry", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
        )
    )
    provider_reference = models.CharField(max_length=100, blank=True)
    # where the provider's cursor (GET /grants) finds it: per provider, increasing in commit order, never below
    # the id (see GrantSequence). Set in the transaction that instructs the grant, so never null once committed.
    position = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resident", "measure", "ordinal"], name="grant_once_per_ordinal"),
            # partial only so that SQLite adds it without rebuilding the table (positions are never null once
            # committed; a query with position > n uses it)
            models.UniqueConstraint(
                fields=["provider", "position"],
                condition=models.Q(position__isnull=False),
                name="grant_position_once",
            ),
        ]
        indexes = [
            models.Index(
                fields=["acknowledgement_entry"],
                condition=models.Q(acknowledgement_entry__isnull=False),
                name="grant_acknowledged_by",
            ),
        ]


class GrantSequence(models.Model):
    """The last position given to a provider's grants (the cursor of ``GET /grants``). Every transaction that
    instructs grants for the provider locks its row (:func:`mynapoint.grants.services.take_positions`) after
    writing its ledger entries and before its audit event, and holds it until it ends: the provider's
    positions commit in the order they are given, so a cursor never passes a grant still to be committed.

    A grant's position is the larger of its id and ``last + 1``: equal to the id unless a grant with a later id
    committed first (ids come from a sequence drawn outside any lock), so cursors kept from when the position
    was the id keep their place."""

    provider = models.OneToOneField(
        "providers.Provider", primary_key=True, on_delete=models.PROTECT, related_name="+"
    )
    last = models.BigIntegerField(default=0)


class OutboxMessage(models.Model):
    """A message to push to a provider (signed webhook), written in the same transaction as its cause."""

    provider = models.ForeignKey("providers.Provider", on_delete=models.PROTECT, related_name="outbox")
    topic = models.CharField(max_length=40)  # grant | link | stop
    payload = models.JSONField()
    created_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["delivered_at", "next_attempt_at"])]
