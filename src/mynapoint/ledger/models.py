"""Ledger accounts, entries and postings.

Points flow from the programme budget, through a provider payable, to a resident-per-measure account:

* ``budget`` — the programme's points budget (its balance goes negative as points are instructed);
* ``payable:<provider>`` — points instructed to a provider and not yet confirmed as granted by it;
* ``resident:<MyKey ID>:<measure>`` — points a resident has received for a measure.

A grant instruction posts budget → payable; the provider's acknowledgement posts payable → resident. A
claw-back runs the other way. Every entry sums to zero, names the rule version and parameter values that
produced it, and the facts (transactions, registrations) behind it. Rows are never updated or deleted
(database triggers refuse it); a correction is a new entry that reverses another.
"""

from __future__ import annotations

from django.db import models


class LedgerAccount(models.Model):
    code = models.CharField(max_length=120, unique=True)
    kind = models.CharField(max_length=20)  # budget | payable | resident
    provider_key = models.CharField(max_length=40, blank=True)
    mykey_id = models.CharField(max_length=8, blank=True)
    measure = models.CharField(max_length=20, blank=True)

    def __str__(self) -> str:
        return self.code


class Entry(models.Model):
    kind = models.CharField(max_length=30)  # grant_instructed | grant_acknowledged | clawback_* | reversal
    at = models.DateTimeField()
    effective_date = models.DateField()  # the JST day the entitlement is counted on
    idempotency_key = models.CharField(max_length=200, unique=True)
    rule_edition = models.CharField(max_length=80)
    parameters = models.JSONField(default=dict)  # the parameter values that produced it
    sources = models.JSONField(default=list)  # transactions / registrations / applications behind it
    reverses = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    memo = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["effective_date"])]


class Posting(models.Model):
    # references checked set by set (dbutil.checked_references); (account, effective_date) serves account lookups
    entry = models.ForeignKey(Entry, on_delete=models.PROTECT, related_name="postings", db_constraint=False)
    account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="postings", db_constraint=False, db_index=False
    )
    amount = models.BigIntegerField()  # signed points; the postings of an entry sum to zero
    effective_date = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["account", "effective_date"])]
