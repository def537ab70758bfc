"""Onboarding a provider and its API keys: the services, and the keys at work against the provider API."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from django.test import Client
from support import NOW

from mynapoint.audit.models import AuditEvent
from mynapoint.audit.selectors import verify_chain
from mynapoint.providers.models import Provider, ProviderApiKey
from mynapoint.providers.services import (
    ProviderError,
    issue_api_key,
    onboard_provider,
    revoke_api_key,
    rotate_api_key,
)

pytestmark = pytest.mark.django_db
API = "/api/provider/v1"


def onboard(**overrides: Any) -> Provider:
    kwargs: dict[str, Any] = {
        "key": "paypay",
        "name_ja": "ペイペイ",
        "kind": "qr",
        "modes": ["charge"],
        "now": NOW,
    }
    return onboard_provider(**{**kwargs, **overrides})


def links(key: str) -> int:
    return Client().get(f"{API}/links", HTTP_X_API_KEY=key).status_code


def test_onboarding_records_every_setting_and_an_audit_event_without_the_secret() -> None:
    provider = onboard(
        key="aeon",
        name_ja="イオンカード",
        name_en="AEON card",
        kind="credit",
        modes=["purchase"],
        measures=["premium", "public_fund"],
        grant_schedule="monthly",
        grant_schedule_days=25,
        charge_deadline=dt.date(2023, 2, 28),
        application_deadline=dt.date(2023, 5, 31),
        pre_registration_required=True,
        security_code_count=2,
        verification="callback",
        verify_url="https://aeon.example/verify",
        grant_delivery="push",
        webhook_url="https://aeon.example/hooks",
    )
    provider.refresh_from_db()
    assert (provider.kind, provider.modes, provider.measures) == (
        "credit",
        ["purchase"],
        ["premium", "public_fund"],
    )
    assert (provider.grant_schedule, provider.grant_schedule_days) == ("monthly", 25)
    assert (provider.charge_deadline, provider.application_deadline) == (
        dt.date(2023, 2, 28),
        dt.date(2023, 5, 31),
    )
    assert provider.pre_registration_required
    assert provider.security_code_count == 2
    assert (provider.verification, provider.grant_delivery) == ("callback", "push")
    assert len(provider.webhook_secret) >= 32  # generated: both the callback and the webhooks are signed
    event = AuditEvent.objects.get(action="provider_onboarded")
    assert event.subject_id == "aeon"
    assert event.after["webhook_secret_set"] is True
    assert provider.webhook_secret not in str(event.after)
    assert verify_chain().ok


def test_a_pull_registry_provider_needs_no_secret() -> None:
    provider = onboard(grant_schedule="days_after", grant_schedule_days=30)
    assert provider.webhook_secret == ""
    assert provider.grant_schedule_days == 30


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"key": "Pay Pay"}, "key"),
        ({"name_ja": " "}, "name_ja"),
        ({"kind": "cash"}, "kind"),
        ({"modes": []}, "modes"),
        ({"modes": ["charge", "charge"]}, "modes"),
        ({"kind": "credit", "modes": ["charge"]}, "modes"),
        ({"measures": ["premium", "lottery"]}, "measures"),
        ({"grant_schedule": "weekly"}, "grant_schedule"),
        ({"grant_schedule": "monthly", "grant_schedule_days": 0}, "grant_schedule_days"),
        ({"grant_schedule": "monthly", "grant_schedule_days": 29}, "grant_schedule_days"),
        ({"grant_schedule": "days_after", "grant_schedule_days": 0}, "grant_schedule_days"),
        ({"grant_schedule_days": 3}, "grant_schedule_days"),
        ({"security_code_count": 4}, "security_code_count"),
        ({"verification": "trust"}, "verification"),
        ({"verification": "callback"}, "verify_url"),
        ({"verification": "callback", "verify_url": "http://verify.example/"}, "verify_url"),
        ({"verification": "callback", "verify_url": "ftp://127.0.0.1/"}, "verify_url"),
        ({"verification": "callback", "verify_url": "https://u:p@verify.example/"}, "verify_url"),
        ({"grant_delivery": "carrier-pigeon"}, "grant_delivery"),
        ({"grant_delivery": "push"}, "webhook_url"),
        (
            {"grant_delivery": "push", "webhook_url": "https://x.example", "webhook_secret": "short"},
            "webhook_secret",
        ),
    ],
)
def test_onboarding_refuses_a_bad_setting_naming_it(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ProviderError) as refused:
        onboard(**overrides)
    assert refused.value.field == field
    assert " / " not in refused.value.ja
    assert refused.value.en
    assert not Provider.objects.exists()
    assert not AuditEvent.objects.filter(action="provider_onboarded").exists()


def test_loopback_http_is_allowed_for_a_sandbox_and_a_key_is_onboarded_once() -> None:
    onboard(verification="callback", verify_url="http://127.0.0.1:8999/verify", webhook_secret="s" * 20)
    with pytest.raises(ProviderError) as again:
        onboard()
    assert again.value.code == "provider_exists"


def test_an_api_key_is_shown_once_and_stored_as_its_sha256() -> None:
    provider = onboard()
    plaintext, row = issue_api_key(provider=provider, label="production", now=NOW)
    assert plaintext.startswith("mnp_")
    assert len(plaintext) >= 4 + 43
    row.refresh_from_db()
    assert row.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row.prefix == plaintext[:12]
    stored = [str(v) for v in ProviderApiKey.objects.values_list(flat=False).get(pk=row.pk)]
    assert plaintext not in stored
    event = AuditEvent.objects.get(action="api_key_issued")
    assert plaintext not in str(event.after)
    assert event.after["prefix"] == row.prefix
    assert links(plaintext) == 200
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_unknown_missing_and_tampered_keys_are_refused_with_401_in_the_error_shape() -> None:
    plaintext, _ = issue_api_key(provider=onboard(), label="", now=NOW)
    for key in ("", "mnp_nothing", plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"), "x" * 500):
        answer = Client().get(f"{API}/links", HTTP_X_API_KEY=key)
        assert answer.status_code == 401
        assert set(answer.json()) == {"code", "message"}
        assert answer.json()["code"] == "unauthorized"
    assert Client().get(f"{API}/links").status_code == 401


def test_a_revoked_key_is_refused_and_revoking_twice_changes_nothing() -> None:
    provider = onboard()
    plaintext, row = issue_api_key(provider=provider, label="", now=NOW)
    assert links(plaintext) == 200
    revoke_api_key(key=row, now=NOW)
    assert links(plaintext) == 401
    again = revoke_api_key(key=row, now=NOW + dt.timedelta(days=1))
    assert again.revoked_at == NOW
    assert AuditEvent.objects.filter(action="api_key_revoked").count() == 1


def test_a_rotation_keeps_the_old_key_until_it_is_revoked() -> None:
    provider = onboard()
    old, old_row = issue_api_key(provider=provider, label="2022", now=NOW)
    new, _ = rotate_api_key(provider=provider, label="2023", now=NOW)
    assert old != new
    assert (links(old), links(new)) == (200, 200)
    rotated = AuditEvent.objects.get(action="api_key_rotated")
    assert rotated.after["valid_keys"] == [old_row.prefix, new[:12]]
    revoke_api_key(key=old_row, now=NOW)
    assert (links(old), links(new)) == (401, 200)
    assert verify_chain().ok


def test_an_inactive_provider_keys_are_refused() -> None:
    provider = onboard()
    plaintext, _ = issue_api_key(provider=provider, label="", now=NOW)
    Provider.objects.filter(pk=provider.pk).update(active=False)
    assert links(plaintext) == 401


def test_a_key_sees_only_its_own_provider() -> None:
    mine, _ = issue_api_key(provider=onboard(key="mine"), label="", now=NOW)
    theirs, _ = issue_api_key(provider=onboard(key="theirs"), label="", now=NOW)
    assert (links(mine), links(theirs)) == (200, 200)
    assert ProviderApiKey.objects.get(prefix=mine[:12]).provider.key == "mine"
