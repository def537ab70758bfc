"""The sandbox provider's use cases: wallets, charges, purchases at demo shops, grants received.

Local writes are short durable transactions on the sandbox's own tables; every call to the platform is made
after they commit (never while a transaction is open: with SQLite the platform would wait for our write lock).
What the platform must hear is kept on the rows until it has heard it, and re-sent idempotently:

- a wallet is declared with ``PUT /accounts`` (``declared_at``);
- a charge or purchase is reported with ``POST /transactions`` under its ``txid`` (``reported_at``);
- a grant received by webhook is credited once per ``grant_id`` and acknowledged with ``POST /grants/ack``
  (``acknowledged_at``);
- should a webhook be lost, :func:`pull_grants` reads ``GET /grants`` from the sandbox's stored cursor
  (``PullCursor``) and credits what it has not received, once per ``grant_id`` as for webhooks; :func:`sync`
  does it every time, so the sandbox catches up whenever it talks to the platform.

Configuration (the platform's URL, the API key the programme office issued, the webhook signing secret) is a
JSON file in the data folder, written by ``mynapoint demo`` (:func:`save_setup`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from mynapoint.sandbox.client import ProviderApiClient, ProviderApiError
from mynapoint.sandbox.models import (
    GrantSource,
    PullCursor,
    ReceivedGrant,
    SandboxTransaction,
    Shop,
    TransactionKind,
    Wallet,
)

__all__ = [
    "DEMO_SHOPS",
    "MAX_AMOUNT",
    "SandboxError",
    "Setup",
    "SyncReport",
    "WalletSpec",
    "acknowledge",
    "bootstrap",
    "charge",
    "declare_wallets",
    "ensure_shops",
    "get_wallet",
    "load_setup",
    "new_webhook_secret",
    "open_wallet",
    "pay",
    "provider_api",
    "pull_grants",
    "receive_grant",
    "report_pending",
    "save_setup",
    "setup_path",
    "sync",
    "wallet_view",
]

log = logging.getLogger(__name__)

MAX_AMOUNT: Final = 1_000_000  # yen in one charge or one purchase
_SERVICE_ID = re.compile(r"^[0-9A-Za-z\-]{1,64}$")
_SECURITY_CODE = re.compile(r"^[0-9A-Za-z]{1,16}$")

DEMO_SHOPS: Final = (
    ("konbini", "デモコンビニ", "Demo convenience store"),
    ("bookstore", "デモ書店", "Demo bookstore"),
    ("cafe", "デモカフェ", "Demo café"),
)


class SandboxError(ValueError):
    """A request the sandbox refuses: a code, Japanese and English, and the HTTP status of its JSON API."""

    def __init__(self, code: str, ja: str, en: str, *, status: int = 422) -> None:
        self.code, self.ja, self.en, self.status = code, ja, en, status
        super().__init__(f"{code}: {en}")


# ------------------------------------------------------------------------------------------------ setup


@dataclass(frozen=True)
class Setup:
    """How the sandbox reaches the platform: as provider ``provider_key`` at ``server`` with ``api_key``;
    webhooks are signed with ``webhook_secret``."""

    provider_key: str
    server: str
    api_key: str
    webhook_secret: str


def setup_path() -> Path:
    configured = getattr(settings, "MYNAPOINT_SANDBOX_CONFIG", None)
    return Path(configured) if configured else Path(settings.DATA_DIR) / "sandbox" / "config.json"


def load_setup(path: Path | None = None) -> Setup | None:
    """The sandbox's configuration, or None: the sandbox is not set up here (its JSON API then answers 404)."""
    path = path or setup_path()
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return Setup(**{name: str(doc[name]) for name in ("provider_key", "server", "api_key", "webhook_secret")})


def save_setup(setup: Setup, path: Path | None = None) -> Path:
    """Write the configuration (owner-only: it holds the API key and the signing secret)."""
    path = path or setup_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(asdict(setup), indent=2) + "\n", encoding="utf-8")
    return path


def provider_api(setup: Setup, *, server: str | None = None) -> ProviderApiClient:
    """A provider API client with the sandbox's key (``server`` overrides the configured platform URL)."""
    return ProviderApiClient(server or setup.server, setup.api_key)


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


# ------------------------------------------------------------------------------------------------ shops


def ensure_shops() -> list[Shop]:
    """The demo shops (made once)."""
    shops = []
    for code, name_ja, name_en in DEMO_SHOPS:
        shop, _ = Shop.objects.get_or_create(code=code, defaults={"name_ja": name_ja, "name_en": name_en})
        shops.append(shop)
    return shops


# ------------------------------------------------------------------------------------------------ wallets


@dataclass(frozen=True, slots=True)
class WalletSpec:
    service_id: str
    security_code: str
    holder_kana: str
    holder_born: dt.date | None


def get_wallet(service_id: str) -> Wallet:
    """A wallet by service ID (404 when there is none)."""
    wallet = Wallet.objects.filter(service_id=service_id).first()
    if wallet is None:
        raise SandboxError(
            "unknown_wallet",
            f"ウォレット {service_id} はありません",
            f"no wallet {service_id!r}",
            status=404,
        )
    return wallet


def open_wallet(*, spec: WalletSpec, now: dt.datetime) -> tuple[Wallet, bool]:
    """Open a wallet (locally: declare it with :func:`declare_wallets`). Opening the same wallet again with the
    same holder and code changes nothing; with another holder or code it is refused (409)."""
    if not _SERVICE_ID.match(spec.service_id):
        raise SandboxError(
            "bad_service_id",
            "決済サービスIDは英数字とハイフンで1〜64文字です",
            "service_id: 1 to 64 letters, digits or hyphens",
        )
    if not _SECURITY_CODE.match(spec.security_code):
        raise SandboxError(
            "bad_security_code", "セキュリティコードは英数字です", "security_code: 1 to 16 letters or digits"
        )
    if not spec.holder_kana.strip() or len(spec.holder_kana) > 100:
        raise SandboxError(
            "bad_holder_kana", "名義人（カナ）は1〜100文字です", "holder_kana: 1 to 100 characters"
        )
    fields = {
        "security_code": spec.security_code,
        "holder_kana": spec.holder_kana,
        "holder_born": spec.holder_born,
    }
    try:
        with transaction.atomic(durable=True):
            wallet, created = Wallet.objects.get_or_create(
                service_id=spec.service_id, defaults={**fields, "opened_at": now}
            )
    except IntegrityError:  # opened at the same moment by another request
        wallet, created = Wallet.objects.get(service_id=spec.service_id), False
    if not created and any(getattr(wallet, name) != value for name, value in fields.items()):
        raise SandboxError(
            "wallet_exists",
            f"ウォレット {spec.service_id} は別の名義ですでにあります",
            f"wallet {spec.service_id!r} exists with another holder or code",
            status=409,
        )
    return wallet, created


def declare_wallets(*, api: ProviderApiClient, now: dt.datetime, every: bool = False) -> int:
    """``PUT /accounts`` with the wallets the platform has not accepted yet (``every``: all of them again).
    Returns how many were declared; a refusal is kept on the wallets (``declare_error``) and raised."""
    wallets = list(
        Wallet.objects.order_by("id") if every else Wallet.objects.filter(declared_at__isnull=True)
    )
    if not wallets:
        return 0
    ids = [w.pk for w in wallets]
    try:
        api.put_accounts(
            [
                {
                    "service_id": w.service_id,
                    "security_codes": [w.security_code],
                    "holder_kana": w.holder_kana,
                    "holder_born": w.holder_born.isoformat() if w.holder_born else None,
                }
                for w in wallets
            ]
        )
    except ProviderApiError as exc:
        Wallet.objects.filter(pk__in=ids).update(declare_error=str(exc)[:300])
        raise
    Wallet.objects.filter(pk__in=ids).update(declared_at=now, declare_error="")
    return len(wallets)


# ------------------------------------------------------------------------------------------------ money


def _amount(value: object, name: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_AMOUNT:
        raise SandboxError(
            f"bad_{name}",
            f"{name} は{low}以上{MAX_AMOUNT:,}以下の整数です",
            f"{name} must be a whole number from {low} to {MAX_AMOUNT}",
        )
    return value


def _txid() -> str:
    return "sbx-" + secrets.token_hex(10)


def charge(*, service_id: str, amount: int, now: dt.datetime) -> SandboxTransaction:
    """Charge ``amount`` yen into a wallet (チャージ). Report it with :func:`report_pending`."""
    amount = _amount(amount, "amount")
    wallet = get_wallet(service_id)
    with transaction.atomic(durable=True):
        Wallet.objects.filter(pk=wallet.pk).update(yen_balance=F("yen_balance") + amount)
        return SandboxTransaction.objects.create(
            txid=_txid(), wallet=wallet, kind=TransactionKind.CHARGE, yen=amount, at=now
        )


def pay(*, service_id: str, shop: str, amount: int, use_points: int, now: dt.datetime) -> SandboxTransaction:
    """Pay ``amount`` yen at a shop, ``use_points`` of it with points (1 point = 1 yen) and the rest from the yen
    balance. Points are the provider's own: spending them needs no call to the platform. Refused (409) when a
    balance is short; nothing changes then."""
    amount = _amount(amount, "amount")
    use_points = _amount(use_points, "use_points", low=0)
    if use_points > amount:
        raise SandboxError(
            "bad_use_points",
            "使うポイントが支払額を超えています",
            f"use_points ({use_points}) is more than the amount ({amount})",
        )
    wallet = get_wallet(service_id)
    where = Shop.objects.filter(code=shop).first()
    if where is None:
        codes = ", ".join(Shop.objects.order_by("code").values_list("code", flat=True))
        raise SandboxError(
            "unknown_shop",
            f"お店 {shop} はありません（{codes}）",
            f"no shop {shop!r} (shops: {codes})",
            status=404,
        )
    yen = amount - use_points
    with transaction.atomic(durable=True):
        moved = Wallet.objects.filter(
            pk=wallet.pk, points_balance__gte=use_points, yen_balance__gte=yen
        ).update(points_balance=F("points_balance") - use_points, yen_balance=F("yen_balance") - yen)
        if not moved:
            wallet.refresh_from_db()
            if wallet.points_balance < use_points:
                raise SandboxError(
                    "not_enough_points",
                    f"ポイントが足りません（残高 {wallet.points_balance:,} ポイント）",
                    f"not enough points: the balance is {wallet.points_balance}",
                    status=409,
                )
            raise SandboxError(
                "not_enough_yen",
                f"残高が足りません（残高 {wallet.yen_balance:,} 円、必要 {yen:,} 円）",
                f"not enough yen: the balance is {wallet.yen_balance}, {yen} needed",
                status=409,
            )
        return SandboxTransaction.objects.create(
            txid=_txid(),
            wallet=wallet,
            kind=TransactionKind.PURCHASE,
            shop=where,
            yen=amount,
            points_used=use_points,
            at=now,
        )


def report_pending(*, api: ProviderApiClient, now: dt.datetime) -> list[str]:
    """``POST /transactions`` for every charge and purchase the platform has not recorded yet, in order (a
    purchase reports the yen paid from the balance; one paid only with points moved no money and is not
    reported). Idempotent by txid. Returns the errors (kept on the rows, retried next time)."""
    errors = []
    pending = SandboxTransaction.objects.select_related("wallet").filter(
        reported_at__isnull=True, yen__gt=F("points_used")
    )
    for tx in pending.order_by("id"):
        try:
            api.post_transaction(
                {
                    "txid": tx.txid,
                    "service_id": tx.wallet.service_id,
                    "kind": tx.kind,
                    "amount": tx.yen_from_balance,
                    "at": tx.at.isoformat(),
                }
            )
        except ProviderApiError as exc:
            SandboxTransaction.objects.filter(pk=tx.pk).update(report_error=str(exc)[:300])
            errors.append(f"{tx.txid}: {exc}")
            if exc.status == 0:
                break  # the platform is unreachable: try the rest next time
            continue
        SandboxTransaction.objects.filter(pk=tx.pk).update(reported_at=now, report_error="")
    return errors


# ------------------------------------------------------------------------------------------------ grants


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SandboxError(
            "bad_grant",
            f"付与指示の {name} が正しくありません",
            f"the grant's {name} is missing or malformed",
            status=400,
        )
    return value


def receive_grant(
    *, data: Any, now: dt.datetime, via: str = GrantSource.WEBHOOK
) -> tuple[ReceivedGrant, bool]:
    """Credit a grant instruction (a webhook's ``data``, or an item of ``GET /grants``) to its wallet, once per
    ``grant_id``: the same grant delivered again, by either way, returns the row already recorded (``False``)
    and credits nothing. An unknown wallet is a 404 (the platform keeps the message and retries)."""
    if not isinstance(data, dict):
        raise SandboxError(
            "bad_grant", "付与指示の形式が正しくありません", "the grant is not an object", status=400
        )
    grant_id = _field(data, "grant_id", int)
    if grant_id < 1:
        raise SandboxError(
            "bad_grant", "付与指示の grant_id が正しくありません", "grant_id must be positive", status=400
        )
    service_id, measure = _field(data, "service_id", str), _field(data, "measure", str)
    amount, link_ref = _field(data, "amount", int), _field(data, "link_ref", str)
    known = ReceivedGrant.objects.filter(grant_id=grant_id).first()
    if known is not None:
        return known, False
    wallet = get_wallet(service_id)
    try:
        with transaction.atomic(durable=True):
            received = ReceivedGrant.objects.create(
                grant_id=grant_id,
                wallet=wallet,
                measure=measure[:20],
                amount=amount,
                link_ref=link_ref[:64],
                received_at=now,
                reference="",
                via=via,
            )
            received.reference = f"SBX-G{received.pk}"  # our own number for the grant, sent with the ack
            received.save(update_fields=["reference"])
            Wallet.objects.filter(pk=wallet.pk).update(points_balance=F("points_balance") + amount)
    except IntegrityError:  # the same grant delivered twice at once: the other delivery credited it
        return ReceivedGrant.objects.get(grant_id=grant_id), False
    log.info("sandbox: grant %s credited %+d points to %s (%s)", grant_id, amount, service_id, via)
    return received, True


GRANTS_FEED: Final = "grants"


def _advance(feed: str, after: int, now: dt.datetime) -> None:
    """Move a feed's cursor forward (never back: two pulls at once each move it only past what they applied)."""
    PullCursor.objects.filter(feed=feed, after__lt=after).update(after=after, pulled_at=now)


def pull_grants(*, api: ProviderApiClient, now: dt.datetime, page_size: int = 100) -> tuple[int, list[str]]:
    """``GET /grants`` from the stored cursor, page by page, crediting each grant not received yet
    (:func:`receive_grant`, once per ``grant_id``: a grant that also came, or comes later, by webhook is
    credited once). The cursor moves past a grant once it is credited; at a grant that cannot be (its wallet is
    unknown here) or when the platform cannot be reached the pull stops, and the next one starts from there.
    Returns how many were credited and the errors. Acknowledging is :func:`acknowledge`'s (:func:`sync` does
    both)."""
    cursor, _ = PullCursor.objects.get_or_create(feed=GRANTS_FEED)
    after, credited = cursor.after, 0
    try:
        while True:
            page = api.grants(after=after, limit=page_size)
            start = after
            for item in page["items"]:
                _, created = receive_grant(data=item, now=now, via=GrantSource.PULL)
                credited += created
                after = max(after, item["grant_id"])  # a grant's cursor is its id (docs/provider-api.md)
                _advance(GRANTS_FEED, after, now)
            if after == start:  # an empty page: up to date
                break
    except (ProviderApiError, SandboxError) as exc:
        log.warning("sandbox: pulling grants after %s stopped: %s", after, exc)
        return credited, [f"GET /grants: {exc}"]
    PullCursor.objects.filter(feed=GRANTS_FEED).update(pulled_at=now)
    return credited, []


def acknowledge(*, api: ProviderApiClient, grants: Iterable[ReceivedGrant], now: dt.datetime) -> int:
    """``POST /grants/ack`` for each grant not yet acknowledged (one by one, so that one refused grant does not
    hold back the others). Returns how many were acknowledged; the first refusal is raised after trying all."""
    done, first_error = 0, None
    for received in grants:
        if received.acknowledged_at is not None:
            continue
        try:
            api.ack_grants([{"grant_id": received.grant_id, "reference": received.reference}])
        except ProviderApiError as exc:
            ReceivedGrant.objects.filter(pk=received.pk).update(ack_error=str(exc)[:300])
            first_error = first_error or exc
            continue
        ReceivedGrant.objects.filter(pk=received.pk).update(acknowledged_at=now, ack_error="")
        received.acknowledged_at = now
        done += 1
    if first_error is not None:
        raise first_error
    return done


# ------------------------------------------------------------------------------------------------ together


@dataclass
class SyncReport:
    declared: int = 0
    pulled: int = 0
    acknowledged: int = 0
    errors: list[str] = field(default_factory=list)


def sync(*, api: ProviderApiClient, now: dt.datetime) -> SyncReport:
    """Tell the platform everything it has not heard yet (undeclared wallets, unreported transactions), fetch
    the grants no webhook brought (:func:`pull_grants`), and acknowledge every grant not acknowledged yet.
    Errors are kept on the rows and returned, never raised."""
    report = SyncReport()
    try:
        report.declared = declare_wallets(api=api, now=now)
    except ProviderApiError as exc:
        report.errors.append(f"PUT /accounts: {exc}")
    report.errors += report_pending(api=api, now=now)
    report.pulled, errors = pull_grants(api=api, now=now)
    report.errors += errors
    try:
        report.acknowledged = acknowledge(
            api=api, grants=ReceivedGrant.objects.filter(acknowledged_at__isnull=True).order_by("id"), now=now
        )
    except ProviderApiError as exc:
        report.errors.append(f"POST /grants/ack: {exc}")
    return report


def bootstrap(*, wallets: Sequence[WalletSpec], api: ProviderApiClient, now: dt.datetime) -> list[Wallet]:
    """Set the sandbox up for the demo: the shops, the wallets, and every wallet declared to the platform.
    Raises :class:`ProviderApiError` when the platform refuses the declaration."""
    ensure_shops()
    opened = [open_wallet(spec=spec, now=now)[0] for spec in wallets]
    declare_wallets(api=api, now=now, every=True)
    return opened


# ------------------------------------------------------------------------------------------------ views


def wallet_view(wallet: Wallet, *, recent: int = 20) -> dict[str, Any]:
    """A wallet as the sandbox's JSON API shows it (never the security code)."""
    wallet.refresh_from_db()
    return {
        "service_id": wallet.service_id,
        "holder_kana": wallet.holder_kana,
        "yen_balance": wallet.yen_balance,
        "points_balance": wallet.points_balance,
        "declared": wallet.declared_at is not None,
        "declare_error": wallet.declare_error,
        "transactions": [
            {
                "txid": tx.txid,
                "kind": tx.kind,
                "shop": tx.shop.code if tx.shop else None,
                "yen": tx.yen,
                "points_used": tx.points_used,
                "at": tx.at.isoformat(),
                "reported": tx.reported_at is not None,
                "report_error": tx.report_error,
            }
            for tx in wallet.transactions.select_related("shop").order_by("-id")[:recent]
        ],
        "grants": [
            {
                "grant_id": g.grant_id,
                "measure": g.measure,
                "amount": g.amount,
                "received_at": g.received_at.isoformat(),
                "via": g.via,
                "acknowledged": g.acknowledged_at is not None,
                "ack_error": g.ack_error,
            }
            for g in wallet.grants.order_by("-id")[:recent]
        ],
    }
