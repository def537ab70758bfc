"""Demo data: a test CA, residents with software cards and PINs, providers and their accounts.

Everything is made through the same services the platform uses (the residents' MyKey IDs are issued by
logging in with their cards). Loading twice changes nothing. Nothing here is a real person.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from mynapoint.applications.adapters import FileRegistryAdapter
from mynapoint.audit.services import Actor
from mynapoint.identity.jpki.ca import load_ca, make_test_ca, publish_crl, save_ca
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient
from mynapoint.identity.models import Resident
from mynapoint.identity.services import declare_profile, issue_login_challenge, login_with_jpki
from mynapoint.providers.models import Provider

__all__ = ["DEMO_RESIDENTS", "DemoResident", "load_demo"]
SETUP = Actor(actor="demo-setup", channel="office", terminal="demo")


@dataclass(frozen=True)
class DemoResident:
    key: str
    name: str
    pin: str
    kana: str
    born: dt.date
    card_applied: dt.date | None
    accounts: dict[str, list[str]]  # provider/service_id -> security codes
    phase1_points: int | None = None
    representative: str | None = None


DEMO_RESIDENTS = [
    DemoResident("hanako", "山田 花子", "4071", "ヤマダ ハナコ", dt.date(1990, 1, 15), dt.date(2021, 11, 1),
                 {"demo/4000-0001": ["1234"], "emoney/E-1001": ["8181"]}),
    DemoResident("taro", "田中 太郎", "5082", "タナカ タロウ", dt.date(1985, 7, 1), dt.date(2023, 3, 5),
                 {"demo/4000-0002": ["2345"]}),
    DemoResident("saburo", "佐藤 三郎", "6093", "サトウ サブロウ", dt.date(1960, 12, 24), dt.date(2020, 6, 1),
                 {"demo/4000-0003": ["3456"]}, phase1_points=5000),
    DemoResident("jiro", "山田 次郎", "7104", "ヤマダ ジロウ", dt.date(2012, 5, 5), dt.date(2022, 2, 1), {},
                 representative="hanako"),
]  # fmt: skip

DEMO_PROVIDERS = [
    {
        "key": "demo",
        "name_ja": "デモ決済",
        "name_en": "Demo Pay",
        "kind": "qr",
        "modes": ["charge", "purchase"],
    },
    {
        "key": "emoney",
        "name_ja": "デモ電子マネー",
        "name_en": "Demo e-money",
        "kind": "emoney",
        "modes": ["charge"],
    },
]


def _login(card: SoftwareCard, pin: str, now: dt.datetime) -> Resident:
    nonce, _ = issue_login_challenge(now=now)
    response = JpkiClient(card).login(nonce, pin)
    resident, _ = login_with_jpki(
        certificate_der=response.certificate_der,
        signature=response.signature,
        nonce=nonce,
        now=now,
        who=SETUP,
    )
    return resident


def load_demo(
    *, folder: Path, now: dt.datetime, echo: Callable[[str], object] = print
) -> dict[str, Resident]:
    """Create (or find) the demo world. Returns the residents by demo key."""
    trust = Path(settings.MYNAPOINT_JPKI_TRUST_DIR)
    if not (trust / "ca.pem").exists():
        echo(f"テスト用認証局を作成 / making a test CA in {trust}")
        save_ca(make_test_ca(now=now - dt.timedelta(days=800)), trust)
    ca = load_ca(trust)
    publish_crl(ca=ca, directory=trust, now=now - dt.timedelta(hours=1), valid_for=dt.timedelta(days=3650))

    for spec in DEMO_PROVIDERS:
        Provider.objects.update_or_create(
            key=spec["key"],
            defaults={
                **spec,
                "measures": ["premium", "health_insurance", "public_fund"],
                "security_code_count": 1,
            },
        )
    registry = FileRegistryAdapter(Path(settings.MYNAPOINT_PROVIDER_REGISTRY))
    cards = folder / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    residents: dict[str, Resident] = {}
    for person in DEMO_RESIDENTS:
        path = cards / f"{person.key}.json"
        if path.exists():
            card = SoftwareCard.load(path)
        else:
            card = SoftwareCard.issue(ca=ca, pin=person.pin, now=now - dt.timedelta(days=300))
            card.save(path)
        resident = _login(card, person.pin, now)
        card.save(path)  # the card's state (tries left) lives in its file
        declare_profile(resident=resident, born=person.born, kana=person.kana, now=now, who=SETUP)
        facts: dict[str, object] = {"card_applied": person.card_applied}
        if person.phase1_points is not None:
            first = next(iter(person.accounts))
            facts.update(
                phase1_applied=dt.date(2020, 9, 1), phase1_account=first, phase1_points=person.phase1_points,
                phase1_mode="charge",
            )  # fmt: skip
        if person.representative:
            facts["legal_representative"] = residents[person.representative]
        Resident.objects.filter(pk=resident.pk).update(**facts)
        resident.refresh_from_db()
        residents[person.key] = resident
        for account, codes in person.accounts.items():
            provider, service_id = account.split("/")
            registry.add(
                provider=provider,
                service_id=service_id,
                entry={
                    "security_codes": codes,
                    "holder_kana": person.kana,
                    "holder_born": person.born.isoformat(),
                },
            )
    (folder / "residents.json").write_text(
        json.dumps(
            {
                p.key: {"name": p.name, "mykey_id": residents[p.key].mykey_id, "card": str(cards / f"{p.key}.json"),
                        "pin": p.pin, "accounts": p.accounts}
                for p in DEMO_RESIDENTS
            },
            ensure_ascii=False,
            indent=2,
        ),
        encoding="utf-8",
    )  # fmt: skip
    return residents
