"""Demo data: a test CA, residents with software cards and PINs, providers and their accounts, and the sandbox
provider デモ決済 (:mod:`mynapoint.sandbox`) wired to the platform through the provider API.

Everything is made through the same services the platform uses (the residents' MyKey IDs are issued by
logging in with their cards; providers are onboarded and given API keys as the programme office does). The
sandbox declares its wallets itself, over HTTP, with its own API key (:func:`bootstrap_sandbox`). Loading twice
changes nothing. Nothing here is a real person.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from mynapoint.audit.services import Actor
from mynapoint.grants.worker import GrantWorker
from mynapoint.identity.jpki.ca import load_ca, make_test_ca, publish_crl, save_ca
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient
from mynapoint.identity.models import Resident
from mynapoint.identity.services import declare_profile, issue_login_challenge, login_with_jpki
from mynapoint.providers.models import GrantDelivery, GrantSchedule, Provider, Verification
from mynapoint.providers.selectors import api_key_for
from mynapoint.providers.services import (
    AccountDeclaration,
    ProviderChanges,
    declare_accounts,
    issue_api_key,
    onboard_provider,
    update_provider,
)
from mynapoint.sandbox import services as sandbox

__all__ = [
    "DEMO_RESIDENTS",
    "SANDBOX_PROVIDER",
    "DemoResident",
    "bootstrap_sandbox",
    "load_demo",
    "local_url",
    "start_background",
]
SETUP = Actor(actor="demo-setup", channel="office", terminal="demo")
SANDBOX_PROVIDER = "demo"  # the provider the sandbox plays (デモ決済)


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

# デモ決済 is the sandbox: immediate grants pushed to its webhook, accounts it declares itself (PUT /accounts).
# デモ電子マネー is not simulated: pulled grants, and its accounts declared here on its behalf.
DEMO_PROVIDERS: list[dict[str, Any]] = [
    {
        "key": SANDBOX_PROVIDER,
        "name_ja": "デモ決済",
        "name_en": "Demo Pay",
        "kind": "qr",
        "modes": ["charge", "purchase"],
        "grant_schedule": GrantSchedule.IMMEDIATE,
        "verification": Verification.REGISTRY,
        "grant_delivery": GrantDelivery.PUSH,
    },
    {
        "key": "emoney",
        "name_ja": "デモ電子マネー",
        "name_en": "Demo e-money",
        "kind": "emoney",
        "modes": ["charge"],
        "grant_schedule": GrantSchedule.IMMEDIATE,
        "verification": Verification.REGISTRY,
        "grant_delivery": GrantDelivery.PULL,
    },
]


def local_url(host: str, port: int) -> str:
    """The demo server's URL as this machine reaches it (a wildcard bind is reached on the loopback)."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _onboard(spec: dict[str, Any], *, webhook_url: str, webhook_secret: str, now: dt.datetime) -> Provider:
    """Onboard a demo provider, or bring an existing one to the demo's settings (its webhook follows the
    port the demo serves on)."""
    push = spec["grant_delivery"] == GrantDelivery.PUSH
    wanted: ProviderChanges = {
        "grant_schedule": spec["grant_schedule"],
        "grant_schedule_days": 0,
        "verification": spec["verification"],
        "grant_delivery": spec["grant_delivery"],
        "webhook_url": webhook_url if push else "",
        "webhook_secret": webhook_secret if push else "",
        "active": True,
    }
    provider = Provider.objects.filter(key=spec["key"]).first()
    if provider is None:
        return onboard_provider(
            **{k: spec[k] for k in ("key", "name_ja", "name_en", "kind", "modes")},
            grant_schedule=wanted["grant_schedule"],
            verification=wanted["verification"],
            grant_delivery=wanted["grant_delivery"],
            webhook_url=wanted["webhook_url"],
            webhook_secret=wanted["webhook_secret"],
            now=now,
            who=SETUP,
        )
    return update_provider(provider_key=provider.key, now=now, who=SETUP, **wanted).provider


def _setup_sandbox_provider(*, server_url: str, now: dt.datetime, echo: Callable[[str], object]) -> None:
    """Onboard デモ決済 and hand the sandbox its API key and webhook secret (kept in the data folder, as a real
    provider keeps the key the programme office showed it once)."""
    known = sandbox.load_setup()
    secret = known.webhook_secret if known else sandbox.new_webhook_secret()
    spec = DEMO_PROVIDERS[0]
    provider = _onboard(spec, webhook_url=f"{server_url}/sandbox/webhook", webhook_secret=secret, now=now)
    key_row = api_key_for(known.api_key) if known else None
    if known is not None and key_row is not None and key_row.provider_id == provider.pk:
        api_key = known.api_key
    else:
        api_key, row = issue_api_key(provider=provider, label="sandbox (mynapoint demo)", now=now, who=SETUP)
        echo(f"デモ決済のAPIキーを発行 / API key issued to the sandbox provider: {row.prefix}…")
    path = sandbox.save_setup(
        sandbox.Setup(provider_key=provider.key, server=server_url, api_key=api_key, webhook_secret=secret)
    )
    echo(f"サンドボックスの設定 / sandbox configuration: {path}")


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
    *, folder: Path, now: dt.datetime, server_url: str, echo: Callable[[str], object] = print
) -> dict[str, Resident]:
    """Create (or find) the demo world for a demo server at ``server_url``. Returns the residents by demo key.
    The sandbox's wallets are opened and declared by :func:`bootstrap_sandbox`, over HTTP."""
    trust = Path(settings.MYNAPOINT_JPKI_TRUST_DIR)
    if not (trust / "ca.pem").exists():
        echo(f"テスト用認証局を作成 / making a test CA in {trust}")
        save_ca(make_test_ca(now=now - dt.timedelta(days=800)), trust)
    ca = load_ca(trust)
    publish_crl(ca=ca, directory=trust, now=now - dt.timedelta(hours=1), valid_for=dt.timedelta(days=3650))

    _setup_sandbox_provider(server_url=server_url, now=now, echo=echo)
    for spec in DEMO_PROVIDERS[1:]:
        _onboard(spec, webhook_url="", webhook_secret="", now=now)
    not_simulated: dict[str, list[AccountDeclaration]] = {}
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
            if provider != SANDBOX_PROVIDER:
                not_simulated.setdefault(provider, []).append(
                    AccountDeclaration(service_id, codes, person.kana, person.born)
                )
    for key, accounts in not_simulated.items():  # the providers the sandbox does not play
        declare_accounts(provider=Provider.objects.get(key=key), accounts=accounts, now=now, who=SETUP)
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


# ------------------------------------------------------------------------------------------------ sandbox


def sandbox_wallets() -> list[sandbox.WalletSpec]:
    """The sandbox's customers: the demo residents' デモ決済 accounts."""
    return [
        sandbox.WalletSpec(account.split("/")[1], codes[0], person.kana, person.born)
        for person in DEMO_RESIDENTS
        for account, codes in person.accounts.items()
        if account.split("/")[0] == SANDBOX_PROVIDER
    ]


@contextmanager
def briefly_serving() -> Iterator[str]:
    """This project's WSGI application on an ephemeral loopback port in a thread, for as long as the block
    runs. The sandbox declares its wallets through it before the demo server opens, so the first resident who
    applies on the demo server already finds them (no race with the server's start)."""
    from django.core.servers.basehttp import (
        ThreadedWSGIServer,
        WSGIRequestHandler,
        get_internal_wsgi_application,
    )

    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler, allow_reuse_address=False)
    server.set_app(get_internal_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, name="demo-setup-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def bootstrap_sandbox(*, now: dt.datetime, echo: Callable[[str], object] = print) -> list[str]:
    """The sandbox sets itself up as a provider would: its shops, a wallet per customer, and every wallet
    declared valid with ``PUT /accounts`` (real HTTP, its own API key). Returns the wallets' service IDs."""
    setup = sandbox.load_setup()
    if setup is None:
        raise RuntimeError("the sandbox provider is not set up: load_demo first")
    with briefly_serving() as url, sandbox.provider_api(setup, server=url) as api:
        wallets = sandbox.bootstrap(wallets=sandbox_wallets(), api=api, now=now)
    echo(
        f"デモ決済のウォレットを登録 / sandbox wallets declared through the provider API: "
        f"{', '.join(w.service_id for w in wallets)}"
    )
    return [w.service_id for w in wallets]


def start_background(
    *, host: str, port: int, interval: float = 2.0, timeout: float = 120.0
) -> threading.Thread:
    """Once the demo server listens: the sandbox catches up with anything the platform has not heard yet (a
    previous run's unacknowledged grants, unreported transactions), then the grant engine runs every
    ``interval`` seconds (:class:`~mynapoint.grants.worker.GrantWorker`: instruct what is due, push the
    outbox to the sandbox's webhook). Returns the (daemon) thread that waits for the server."""
    target = ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host, port)  # noqa: S104

    def when_listening() -> None:
        from django.db import close_old_connections

        from mynapoint import clock

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(target, timeout=0.5):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            return
        setup = sandbox.load_setup()
        if setup is not None:
            try:
                with sandbox.provider_api(setup) as api:
                    sandbox.sync(api=api, now=clock.now())
            finally:
                close_old_connections()
        GrantWorker(interval=interval).start()

    thread = threading.Thread(target=when_listening, name="demo-background", daemon=True)
    thread.start()
    return thread
