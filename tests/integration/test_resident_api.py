"""The resident HTTP API through Django's test client: login, profile, applications, a representative."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from support import PIN

from mynapoint.applications.adapters import FileRegistryAdapter
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db
API = "/api/resident/v1"


def login(client: Client, card: SoftwareCard) -> dict[str, Any]:
    challenge = client.post(f"{API}/login/challenge").json()
    response = JpkiClient(card).login(base64.b64decode(challenge["nonce"]), PIN)
    answer = client.post(
        f"{API}/login/jpki",
        {
            "certificate": base64.b64encode(response.certificate_der).decode(),
            "signature": base64.b64encode(response.signature).decode(),
            "nonce": challenge["nonce"],
        },
        content_type="application/json",
    )
    assert answer.status_code == 200, answer.content
    return dict(answer.json())


def test_login_declare_profile_apply_and_see_the_status(
    providers: dict[str, Provider], make_card: Callable[..., SoftwareCard], registry: FileRegistryAdapter
) -> None:
    client = Client()
    card = make_card()
    first = login(client, card)
    assert first["first_login"] is True
    assert client.get(f"{API}/me").json()["measures"][0]["status"] == "未申込"
    Resident.objects.filter(mykey_id=first["mykey_id"]).update(card_applied=dt.date(2021, 11, 1))
    missing = client.post(
        f"{API}/applications",
        {
            "measure": "premium",
            "provider": "wallet",
            "service_id": "77",
            "security_codes": ["1"],
            "mode": "charge",
        },
        content_type="application/json",
    )
    assert missing.status_code == 422
    assert missing.json()["code"] == "profile_missing"
    profile = client.put(
        f"{API}/me/profile", {"born": "1990-01-15", "kana": "ヤマダ ハナコ"}, content_type="application/json"
    )
    assert profile.status_code == 200
    registry.add(
        provider="wallet",
        service_id="77",
        entry={"security_codes": ["1"], "holder_kana": "ﾔﾏﾀﾞ ﾊﾅｺ", "holder_born": "1990-01-15"},
    )
    applied = client.post(
        f"{API}/applications",
        {
            "measure": "premium",
            "provider": "wallet",
            "service_id": "77",
            "security_codes": ["1"],
            "mode": "charge",
        },
        content_type="application/json",
    )
    assert applied.status_code == 200, applied.content
    assert applied.json()["accepted"] is True
    assert client.get(f"{API}/me").json()["measures"][0]["status"] == "申込済"


def test_a_session_does_not_survive_logout_or_the_next_login(
    providers: dict[str, Provider], make_card: Callable[..., SoftwareCard]
) -> None:
    client = Client()  # one shared terminal
    first = login(client, make_card())
    assert client.post(f"{API}/logout").status_code == 204
    assert client.get(f"{API}/me").status_code == 401
    login(client, make_card())  # the next visitor
    second = login(client, make_card())
    assert client.get(f"{API}/me").json()["mykey_id"] == second["mykey_id"] != first["mykey_id"]


def test_a_representative_applies_for_a_child_under_fifteen(
    providers: dict[str, Provider],
    make_card: Callable[..., SoftwareCard],
    make_resident: Callable[..., Resident],
) -> None:
    parent_card = make_card()
    client = Client()
    parent_id = login(client, parent_card)["mykey_id"]
    parent = Resident.objects.get(mykey_id=parent_id)
    Resident.objects.filter(pk=parent.pk).update(
        kana="ヤマダ タロウ", born=dt.date(1980, 1, 1), card_applied=dt.date(2021, 1, 1)
    )
    child = make_resident(
        kana="ヤマダ サクラ",
        born=dt.date(2012, 4, 1),
        legal_representative=parent,
        accounts={"wallet/88": ["5"]},
    )
    body = {
        "measure": "health_insurance",
        "provider": "wallet",
        "service_id": "88",
        "security_codes": ["5"],
        "mode": "charge",
    }
    applied = client.post(
        f"{API}/applications", {**body, "on_behalf_of": child.mykey_id}, content_type="application/json"
    )
    assert applied.status_code == 200, applied.content
    assert applied.json()["accepted"] is True
    stranger = Client()
    login(stranger, make_card())
    refused = stranger.post(
        f"{API}/applications", {**body, "on_behalf_of": child.mykey_id}, content_type="application/json"
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "not_representative"


def test_a_bad_signature_is_refused_with_a_japanese_message(
    providers: dict[str, Provider], make_card: Callable[..., SoftwareCard]
) -> None:
    client = Client()
    card = make_card()
    challenge = client.post(f"{API}/login/challenge").json()
    response = JpkiClient(card).login(base64.b64decode(challenge["nonce"]), PIN)
    bad = client.post(
        f"{API}/login/jpki",
        {
            "certificate": base64.b64encode(response.certificate_der).decode(),
            "signature": base64.b64encode(bytes(len(response.signature))).decode(),
            "nonce": challenge["nonce"],
        },
        content_type="application/json",
    )
    assert bad.status_code == 401
    assert bad.json()["code"] == "bad_signature"
    assert bad.json()["message"]


def test_malformed_input_gets_one_error_shape_naming_the_field(providers: dict[str, Provider]) -> None:
    client = Client()
    answer = client.post(f"{API}/login/jpki", {"certificate": "x"}, content_type="application/json")
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "invalid_input"
    assert "signature" in body["message_en"]
    assert "nonce" in body["message_en"]
    assert body["message"].startswith("入力内容に誤りがあります")
