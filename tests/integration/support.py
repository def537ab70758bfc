"""Fixtures for the platform tests: a test CA as the trusted JPKI CA, a provider account registry, providers,
and residents with software cards. Times are fixed; the services take them as arguments."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from concurrency_hooks import flushable_database
from django.conf import settings
from pytest_django import DjangoDbBlocker

from mynapoint import clock
from mynapoint.applications.adapters import FileRegistryAdapter
from mynapoint.audit.services import Actor
from mynapoint.identity.jpki.ca import TestCA, make_test_ca, publish_crl, save_ca
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient
from mynapoint.identity.models import Resident
from mynapoint.identity.services import issue_login_challenge, login_with_jpki
from mynapoint.providers.models import Provider
from mynapoint.rules.model import JST

NOW = dt.datetime(2022, 7, 1, 10, 0, tzinfo=JST)
PIN = "4071"
SELF = Actor(actor="test", channel="self", terminal="")
FEED = Actor(actor="feed:test", channel="feed", terminal="")


@pytest.fixture(scope="session")
def trust_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpki")
    ca = make_test_ca(now=NOW - dt.timedelta(days=400))
    save_ca(ca, folder)
    publish_crl(ca=ca, directory=folder, now=NOW - dt.timedelta(days=1), valid_for=dt.timedelta(days=3650))
    return folder


@pytest.fixture(scope="session")
def test_ca(trust_dir: Path) -> TestCA:
    from mynapoint.identity.jpki.ca import load_ca

    return load_ca(trust_dir)


@pytest.fixture(autouse=True)
def _platform_settings(trust_dir: Path, tmp_path: Path) -> Iterator[None]:
    old = (settings.MYNAPOINT_JPKI_TRUST_DIR, settings.MYNAPOINT_PROVIDER_REGISTRY)
    settings.MYNAPOINT_JPKI_TRUST_DIR = trust_dir
    settings.MYNAPOINT_PROVIDER_REGISTRY = tmp_path / "provider_accounts.yaml"
    clock.start_at(NOW)
    yield
    clock.start_at(None)
    settings.MYNAPOINT_JPKI_TRUST_DIR, settings.MYNAPOINT_PROVIDER_REGISTRY = old


@pytest.fixture
def registry() -> FileRegistryAdapter:
    return FileRegistryAdapter(Path(settings.MYNAPOINT_PROVIDER_REGISTRY))


@pytest.fixture
def providers(db: Any) -> dict[str, Provider]:
    return {
        "wallet": Provider.objects.create(
            key="wallet", name_ja="デモウォレット", kind="qr", modes=["charge", "purchase"],
            measures=["premium", "health_insurance", "public_fund"],
        ),
        "card": Provider.objects.create(
            key="card", name_ja="デモカード", kind="credit", modes=["purchase"], security_code_count=2,
            measures=["premium", "health_insurance", "public_fund"],
        ),
    }  # fmt: skip


@pytest.fixture
def make_card(test_ca: TestCA) -> Callable[..., SoftwareCard]:
    def make(*, issued: dt.datetime = NOW - dt.timedelta(days=200)) -> SoftwareCard:
        return SoftwareCard.issue(ca=test_ca, pin=PIN, now=issued)

    return make


def card_login(card: SoftwareCard, *, now: dt.datetime = NOW) -> tuple[Resident, bool]:
    nonce, _ = issue_login_challenge(now=now)
    response = JpkiClient(card).login(nonce, PIN)
    return login_with_jpki(
        certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now, who=SELF
    )


@pytest.fixture
def make_resident(
    db: Any, make_card: Callable[..., SoftwareCard], registry: FileRegistryAdapter
) -> Callable[..., Resident]:
    """A resident who logged in with a card, declared a profile, and holds accounts at the providers."""

    def make(
        *,
        kana: str = "ヤマダ ハナコ",
        born: dt.date = dt.date(1990, 1, 15),
        card_applied: dt.date | None = dt.date(2021, 11, 1),
        accounts: dict[str, list[str]] | None = None,
        **facts: Any,
    ) -> Resident:
        resident, _ = card_login(make_card())
        Resident.objects.filter(pk=resident.pk).update(
            kana=kana, born=born, card_applied=card_applied, **facts
        )
        resident.refresh_from_db()
        for spec, codes in (accounts or {}).items():
            provider, service_id = spec.split("/")
            registry.add(
                provider=provider,
                service_id=service_id,
                entry={"security_codes": codes, "holder_kana": kana, "holder_born": born.isoformat()},
            )
        return resident

    return make


@pytest.fixture(scope="module")
def flushable(django_db_setup: None, django_db_blocker: DjangoDbBlocker) -> Iterator[None]:
    """For a module's transactional tests (``django_db(transaction=True)``, whose threads must see committed
    rows): they end by flushing the database, which the append-only tables' triggers allow only inside."""
    with django_db_blocker.unblock(), flushable_database():
        yield
