"""Onboarding and editing a provider and its API keys: the services, and the keys at work against the provider
API."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from support import NOW, SELF

from mynapoint.applications.services import apply_for_measure
from mynapoint.audit.models import AuditEvent
from mynapoint.audit.selectors import verify_chain
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider, ProviderApiKey
from mynapoint.providers.services import (
    PROGRAMME_OFFICE,
    SETTINGS,
    AccountDeclaration,
    ProviderChanges,
    ProviderError,
    ProviderUpdate,
    declare_accounts,
    issue_api_key,
    onboard_provider,
    revoke_api_key,
    rotate_api_key,
    update_provider,
    withdraw_account,
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


# ------------------------------------------------------------------------------------------------ editing


def edit(*, provider_key: str = "paypay", now: dt.datetime = NOW, **changes: Any) -> ProviderUpdate:
    return update_provider(provider_key=provider_key, now=now, **changes)


def test_an_edit_changes_only_what_is_given_and_audits_before_and_after() -> None:
    onboard(modes=["charge"])
    result = edit(
        name_en="PayPay",
        modes=["charge", "purchase"],
        grant_schedule="days_after",
        grant_schedule_days=30,
        charge_deadline=dt.date(2023, 2, 28),
        pre_registration_required=True,
        active=False,
    )
    assert result.changed == (
        "name_en",
        "modes",
        "grant_schedule",
        "grant_schedule_days",
        "charge_deadline",
        "pre_registration_required",
        "active",
    )
    provider = Provider.objects.get(key="paypay")
    assert result.provider == provider
    assert (provider.name_ja, provider.name_en, provider.modes) == (
        "ペイペイ",
        "PayPay",
        ["charge", "purchase"],
    )
    assert (provider.grant_schedule, provider.grant_schedule_days) == ("days_after", 30)
    assert provider.charge_deadline == dt.date(2023, 2, 28)
    assert provider.pre_registration_required
    assert not provider.active
    event = AuditEvent.objects.get(action="provider_updated")
    assert (event.subject_type, event.subject_id, event.actor) == ("provider", "paypay", "programme-office")
    assert event.before == {
        "name_en": "",
        "modes": ["charge"],
        "grant_schedule": "immediate",
        "grant_schedule_days": 0,
        "charge_deadline": None,
        "pre_registration_required": False,
        "active": True,
    }
    assert event.after["modes"] == ["charge", "purchase"]
    assert event.after["charge_deadline"] == "2023-02-28"
    assert event.after["changed"] == list(result.changed)
    assert verify_chain().ok


def test_an_edit_that_changes_nothing_records_nothing() -> None:
    onboard(name_en="PayPay")
    result = edit(name_ja="ペイペイ", name_en="PayPay", modes=["charge"], webhook_secret="")
    assert result.changed == ()
    assert not AuditEvent.objects.filter(action="provider_updated").exists()


def test_the_key_cannot_change_and_an_unknown_provider_is_a_404() -> None:
    onboard()
    with pytest.raises(ProviderError) as refused:
        update_provider(provider_key="paypay", now=NOW, key="paypay2")  # type: ignore[call-arg]
    assert (refused.value.code, refused.value.field) == ("not_editable", "key")
    assert "事業者キー" in refused.value.ja
    with pytest.raises(ProviderError) as unknown:
        edit(provider_key="nobody", name_ja="誰か")
    assert (unknown.value.code, unknown.value.field, unknown.value.status) == (
        "unknown_provider",
        "provider_key",
        404,
    )
    assert Provider.objects.get().key == "paypay"


@pytest.mark.parametrize(
    ("onboarded", "changes", "field"),
    [
        ({}, {"name_ja": " "}, "name_ja"),
        ({}, {"name_en": "x" * 101}, "name_en"),
        ({}, {"kind": "cash"}, "kind"),
        ({}, {"kind": "credit"}, "modes"),  # checked against the modes it keeps: charge
        ({"kind": "credit", "modes": ["purchase"]}, {"modes": ["charge", "purchase"]}, "modes"),
        ({}, {"modes": []}, "modes"),
        ({}, {"measures": ["lottery"]}, "measures"),
        ({}, {"grant_schedule": "monthly"}, "grant_schedule_days"),  # its days stay 0
        ({"grant_schedule": "monthly", "grant_schedule_days": 25}, {"grant_schedule_days": 31}, "grant_schedule_days"),
        ({}, {"security_code_count": 0}, "security_code_count"),
        ({}, {"verification": "callback"}, "verify_url"),
        ({"verification": "callback", "verify_url": "https://v.example/"}, {"verify_url": ""}, "verify_url"),
        ({}, {"grant_delivery": "push", "webhook_url": "http://hooks.example/"}, "webhook_url"),
        ({}, {"grant_delivery": "push", "webhook_url": "https://x.example", "webhook_secret": "short"}, "webhook_secret"),
    ],
)  # fmt: skip
def test_an_edit_refuses_a_bad_setting_naming_it(
    onboarded: dict[str, Any], changes: dict[str, Any], field: str
) -> None:
    provider = onboard(**onboarded)
    before = {name: getattr(provider, name) for name in SETTINGS}
    with pytest.raises(ProviderError) as refused:
        edit(**changes)
    assert refused.value.field == field
    assert refused.value.status == 422
    assert refused.value.ja
    assert refused.value.en
    provider = Provider.objects.get()
    assert {name: getattr(provider, name) for name in SETTINGS} == before
    assert not AuditEvent.objects.filter(action="provider_updated").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"name_ja": ""},
        {"kind": "cash"},
        {"modes": ["charge", "charge"]},
        {"measures": []},
        {"grant_schedule": "weekly"},
        {"grant_schedule": "days_after", "grant_schedule_days": 366},
        {"security_code_count": 4},
        {"verification": "trust"},
        {"grant_delivery": "carrier-pigeon"},
        {"verification": "callback", "verify_url": "https://u:p@verify.example/"},
        {"grant_delivery": "push", "webhook_url": "ftp://127.0.0.1/"},
    ],
)
def test_onboarding_and_editing_refuse_alike(bad: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as at_onboarding:
        onboard(key="other", **bad)
    onboard()
    with pytest.raises(ProviderError) as at_editing:
        edit(**bad)
    first, second = at_onboarding.value, at_editing.value
    assert (first.code, first.field, first.ja, first.en) == (second.code, second.field, second.ja, second.en)


def test_the_editable_settings_are_the_provider_columns_but_the_key() -> None:
    columns = {f.name for f in Provider._meta.concrete_fields} - {"id", "key"}
    assert set(SETTINGS) == columns
    assert set(ProviderChanges.__annotations__) == columns


def test_a_provider_switched_to_signed_delivery_gets_a_secret_shown_to_nobody_in_the_audit_log() -> None:
    provider = onboard()
    assert provider.webhook_secret == ""
    result = edit(grant_delivery="push", webhook_url="https://paypay.example/hooks")
    assert result.changed == ("grant_delivery", "webhook_url", "webhook_secret")
    secret = result.provider.webhook_secret
    assert len(secret) >= 32
    event = AuditEvent.objects.get(action="provider_updated")
    assert event.before["webhook_secret_set"] is False
    assert event.after["webhook_secret_set"] is True
    assert secret not in str(event.after)
    assert edit(name_ja="ペイペイ2").provider.webhook_secret == secret  # other edits keep it
    rotated = edit(webhook_secret="").provider.webhook_secret  # as at onboarding: a new one is generated
    assert rotated not in ("", secret)
    given = edit(webhook_secret="g" * 20)
    assert given.changed == ("webhook_secret",)
    assert given.provider.webhook_secret == "g" * 20
    back = edit(grant_delivery="pull", webhook_url="", webhook_secret="")
    assert back.provider.webhook_secret == ""
    assert verify_chain().ok


def test_deactivating_a_provider_refuses_its_keys_and_reactivating_lets_them_in() -> None:
    plaintext, _ = issue_api_key(provider=onboard(), label="", now=NOW)
    edit(active=False)
    assert links(plaintext) == 401
    edit(active=True)
    assert links(plaintext) == 200


# what an edit may not take from residents (decision Q14)


def test_a_mode_or_measure_residents_applied_with_cannot_be_removed(
    make_resident: Callable[..., Resident],
) -> None:
    onboard(key="wallet", modes=["charge", "purchase"])
    hanako = make_resident(accounts={"wallet/1001": ["1234"]})
    first = apply_for_measure(
        resident=hanako, measure="premium", provider_key="wallet", service_id="1001", security_codes=["1234"],
        mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    )  # fmt: skip
    assert first.accepted, first.message_en
    again = apply_for_measure(
        resident=hanako, measure="premium", provider_key="wallet", service_id="1001", security_codes=["1234"],
        mode="purchase", operated_by=None, present=[], now=NOW, who=SELF,
    )  # fmt: skip
    assert not again.accepted  # a rejected application relies on nothing
    with pytest.raises(ProviderError) as mode:
        edit(provider_key="wallet", modes=["purchase"])
    assert (mode.value.code, mode.value.field, mode.value.status) == ("mode_in_use", "modes", 409)
    assert "charge" in mode.value.ja
    assert "1 accepted application(s) use charge" in mode.value.en
    with pytest.raises(ProviderError) as measure:
        edit(provider_key="wallet", measures=["health_insurance", "public_fund"])
    assert (measure.value.code, measure.value.field, measure.value.status) == (
        "measure_in_use",
        "measures",
        409,
    )
    assert Provider.objects.get(key="wallet").modes == ["charge", "purchase"]
    allowed = edit(provider_key="wallet", modes=["charge"], measures=["premium", "health_insurance"])
    assert allowed.changed == ("modes", "measures")
    assert AuditEvent.objects.filter(action="provider_updated").count() == 1  # the refused edits left nothing


def test_a_phase1_link_carried_over_keeps_the_mode_it_earns_with(
    make_resident: Callable[..., Resident],
) -> None:
    onboard(modes=["purchase"])
    carried = {"phase1_applied": dt.date(2022, 5, 1), "phase1_account": "paypay/P-1", "phase1_points": 1000}
    make_resident(**carried)  # no mode recorded: she earns with the provider's first mode, purchase
    with pytest.raises(ProviderError) as refused:
        edit(modes=["charge", "purchase"])  # charge would sort first and become her mode
    assert refused.value.code == "mode_in_use"
    with pytest.raises(ProviderError) as premium:
        edit(measures=["health_insurance", "public_fund"])
    assert premium.value.code == "measure_in_use"
    Resident.objects.filter(phase1_account="paypay/P-1").update(phase1_mode="purchase")
    assert edit(modes=["charge", "purchase"]).changed == ("modes",)


def test_the_number_of_security_codes_waits_until_no_declared_account_keeps_the_old_number() -> None:
    provider = onboard()
    declare_accounts(
        provider=provider,
        accounts=[AccountDeclaration("A-1", ["12"], "ヤマダ ハナコ", None)],
        now=NOW,
        who=PROGRAMME_OFFICE,
    )
    with pytest.raises(ProviderError) as refused:
        edit(security_code_count=2)
    assert (refused.value.code, refused.value.field, refused.value.status) == (
        "security_codes_declared",
        "security_code_count",
        409,
    )
    withdraw_account(provider=provider, service_id="A-1", now=NOW, who=PROGRAMME_OFFICE)
    assert edit(security_code_count=2).changed == ("security_code_count",)
    declare_accounts(
        provider=Provider.objects.get(),
        accounts=[AccountDeclaration("A-1", ["12", "34"], "ヤマダ ハナコ", None)],
        now=NOW,
        who=PROGRAMME_OFFICE,
    )


@pytest.mark.parametrize("name", ["charge_deadline", "application_deadline"])
def test_a_deadline_moves_later_or_to_today_never_earlier_into_the_past(name: str) -> None:
    today, later = NOW.date(), NOW + dt.timedelta(days=10)

    def move(day: dt.date | None, *, now: dt.datetime = NOW) -> ProviderUpdate:
        change: dict[str, Any] = {name: day}
        return edit(now=now, **change)

    onboard(**{name: today + dt.timedelta(days=90)})
    for past in (today - dt.timedelta(days=1), dt.date(2022, 1, 1)):
        with pytest.raises(ProviderError) as refused:
            move(past)
        assert (refused.value.code, refused.value.field) == ("deadline_passed", name)
        assert str(today) in refused.value.ja
    assert move(today + dt.timedelta(days=30)).changed == (name,)  # earlier, but still to come
    assert move(today).changed == (name,)
    assert move(None, now=later).changed == (name,)  # cleared: the programme's deadline
    with pytest.raises(ProviderError):
        move(today, now=later)  # from no deadline of its own to a day already past
    move(today)
    # a deadline that has passed may still be moved later, even to a day that has passed too
    moved = move(today + dt.timedelta(days=5), now=later)
    assert getattr(moved.provider, name) == today + dt.timedelta(days=5)
