"""Identity use cases: login challenges, card login (JPKI), MyKey ID issuance, certificate renewals,
the resident's declared profile, and OpenID Connect subjects. Each write is one durable transaction with
its audit event."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from django.conf import settings
from django.db import IntegrityError, transaction

from mynapoint.audit.services import Actor, record
from mynapoint.identity.jpki.verify import (
    JpkiVerifier,
    LoginRejected,
    NonceExpired,
    NonceUnknownOrUsed,
    VerifiedIdentity,
)
from mynapoint.identity.models import Certificate, CertificateRenewal, LoginNonce, OidcSubject, Resident
from mynapoint.identity.mynumber import refuse_my_number
from mynapoint.identity.trust import FolderCrlProvider, load_trust_anchors
from mynapoint.rules.kana import kana_key
from mynapoint.rules.model import JST

__all__ = [
    "CertificateRevokedHere",
    "DbNonceStore",
    "IdentityError",
    "declare_profile",
    "issue_login_challenge",
    "login_with_jpki",
    "login_with_oidc_subject",
    "resolve",
    "revoke_certificate",
    "serial_text",
]

MYKEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud at desks


class IdentityError(ValueError):
    """A request that cannot be done, with a Japanese and an English message."""

    def __init__(self, code: str, ja: str, en: str) -> None:
        self.code, self.ja, self.en = code, ja, en
        super().__init__(f"{code}: {en}")


class CertificateRevokedHere(LoginRejected):
    code = "revoked"
    message_ja = "この電子証明書は失効しています。市区町村の窓口で手続きしてください。"
    message_en = "this certificate has been revoked; please contact your municipal office"


def serial_text(serial: int) -> str:
    length = max(1, (serial.bit_length() + 7) // 8)
    return serial.to_bytes(length, "big").hex(":")


# ------------------------------------------------------------------------------------------------ nonces


class DbNonceStore:
    """Login nonces in the database: single use, expiring; shared by every server process."""

    def __init__(self, ttl: dt.timedelta) -> None:
        self.ttl = ttl

    def issue(self, *, now: dt.datetime) -> bytes:
        raw = secrets.token_bytes(32)
        LoginNonce.objects.create(value=raw.hex(), issued_at=now, expires_at=now + self.ttl)
        return raw

    def consume(self, nonce: bytes, *, now: dt.datetime) -> None:
        value = nonce.hex()
        used = LoginNonce.objects.filter(value=value, used_at__isnull=True, expires_at__gt=now).update(
            used_at=now
        )
        if used == 1:
            return
        row = LoginNonce.objects.filter(value=value).first()
        if row is not None and row.used_at is None and row.expires_at <= now:
            raise NonceExpired()
        raise NonceUnknownOrUsed()


def _nonce_store() -> DbNonceStore:
    return DbNonceStore(dt.timedelta(seconds=settings.MYNAPOINT_LOGIN_NONCE_SECONDS))


@lru_cache(maxsize=4)
def _verifier_for(folder: Path) -> JpkiVerifier:
    return JpkiVerifier(load_trust_anchors(folder), FolderCrlProvider(folder), nonce_store=_nonce_store())


def verifier() -> JpkiVerifier:
    return _verifier_for(Path(settings.MYNAPOINT_JPKI_TRUST_DIR))


def issue_login_challenge(*, now: dt.datetime) -> tuple[bytes, dt.datetime]:
    """A fresh single-use nonce for the card to sign, and when it expires."""
    store = _nonce_store()
    with transaction.atomic(durable=True):
        nonce = store.issue(now=now)
    return nonce, now + store.ttl


# ------------------------------------------------------------------------------------------------ residents


def resolve(resident: Resident) -> Resident:
    """Follow a merged duplicate to the resident it was merged into."""
    seen = 0
    while resident.merged_into_id is not None and seen < 10:
        resident = Resident.objects.get(pk=resident.merged_into_id)
        seen += 1
    return resident


def _new_mykey_id() -> str:
    for _ in range(20):
        candidate = "".join(secrets.choice(MYKEY_ALPHABET) for _ in range(8))
        if not Resident.objects.filter(mykey_id=candidate).exists():
            return candidate
    raise RuntimeError("could not find a free MyKey ID")  # pragma: no cover - 32^8 ids


def _certificate_facts(certificate_der: bytes) -> tuple[dt.datetime, dt.datetime]:
    cert = x509.load_der_x509_certificate(certificate_der)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _resident_for_certificate(
    identity: VerifiedIdentity, *, not_before: dt.datetime, now: dt.datetime, who: Actor
) -> tuple[Resident, bool]:
    serial = serial_text(identity.serial)
    cert = (
        Certificate.objects.select_related("resident").filter(issuer=identity.issuer, serial=serial).first()
    )
    if cert is not None:
        if cert.revoked_at is not None:
            raise CertificateRevokedHere()
        return resolve(cert.resident), False
    renewal = CertificateRenewal.objects.filter(new_issuer=identity.issuer, new_serial=serial).first()
    resident = None
    if renewal is not None:
        old = Certificate.objects.filter(issuer=renewal.old_issuer, serial=renewal.old_serial).first()
        resident = resolve(old.resident) if old else None
    created = resident is None
    if resident is None:
        resident = Resident.objects.create(
            mykey_id=_new_mykey_id(),
            created_at=now,
            card_issued=not_before.astimezone(JST).date(),
        )
        record(
            who=who,
            action="mykey_id_issued",
            subject_type="resident",
            subject_id=resident.mykey_id,
            before=None,
            after={"mykey_id": resident.mykey_id, "card_issued": resident.card_issued},
            at=now,
        )
    new_cert = Certificate.objects.create(
        resident=resident,
        issuer=identity.issuer,
        serial=serial,
        not_before=not_before,
        not_after=identity.not_after,
        first_seen_at=now,
    )
    if renewal is not None and not created:
        Certificate.objects.filter(issuer=renewal.old_issuer, serial=renewal.old_serial).update(
            renewed_to=new_cert
        )
    return resident, created


def login_with_jpki(
    *, certificate_der: bytes, signature: bytes, nonce: bytes, now: dt.datetime, who: Actor
) -> tuple[Resident, bool]:
    """Check a card login (chain, validity, signature, CRL, replay) and return the resident.

    The first login with a certificate issues a MyKey ID; a renewed certificate keeps its MyKey ID.
    Raises :class:`LoginRejected` (with Japanese and English messages) when the login is refused.
    """
    identity = verifier().verify_login(
        certificate_der=certificate_der, signature=signature, nonce=nonce, now=now
    )
    not_before, _ = _certificate_facts(certificate_der)
    actor = Actor(actor=f"cert:{identity.serial_hex}", channel=who.channel, terminal=who.terminal)
    for attempt in range(2):
        try:
            with transaction.atomic(durable=True):
                resident, created = _resident_for_certificate(
                    identity, not_before=not_before, now=now, who=actor
                )
                record(
                    who=Actor(actor=resident.mykey_id, channel=who.channel, terminal=who.terminal),
                    action="login",
                    subject_type="resident",
                    subject_id=resident.mykey_id,
                    before=None,
                    after={"method": "jpki", "certificate": f"{identity.issuer}#{identity.serial_hex}"},
                    at=now,
                )
                return resident, created
        except IntegrityError:
            if attempt:  # the same certificate's first login raced with another: the second finds it
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def login_with_oidc_subject(
    *, issuer: str, sub: str, certificate_der: bytes | None, now: dt.datetime, who: Actor
) -> Resident:
    """The 認証アプリ route: an OpenID subject maps to the same resident as the card that signed in.

    ``certificate_der`` is the user certificate the OpenID provider verified (sent as a claim); the first
    time a subject is seen it is tied to that certificate's resident.
    """
    with transaction.atomic(durable=True):
        known = OidcSubject.objects.select_related("resident").filter(issuer=issuer, sub=sub).first()
        if known is not None:
            resident = resolve(known.resident)
        else:
            if certificate_der is None:
                raise IdentityError(
                    "oidc_unknown_subject", "初回はカードの電子証明書が必要です", "first login needs the card"
                )
            cert = x509.load_der_x509_certificate(certificate_der)
            identity = VerifiedIdentity(
                issuer=cert.issuer.rfc4514_string(),
                serial=cert.serial_number,
                not_after=cert.not_valid_after_utc,
            )
            resident, _ = _resident_for_certificate(
                identity, not_before=cert.not_valid_before_utc, now=now, who=who
            )
            OidcSubject.objects.create(issuer=issuer, sub=sub, resident=resident, first_seen_at=now)
        record(
            who=Actor(actor=resident.mykey_id, channel=who.channel, terminal=who.terminal),
            action="login",
            subject_type="resident",
            subject_id=resident.mykey_id,
            before=None,
            after={"method": "oidc", "issuer": issuer},
            at=now,
        )
        return resident


def declare_profile(
    *, resident: Resident, born: dt.date | None, kana: str | None, now: dt.datetime, who: Actor
) -> Resident:
    """The resident declares her birth date and kana name (used by the minor rules and holder checks)."""
    if kana is not None:
        refuse_my_number(kana, where="kana")
        if not kana_key(kana):
            raise IdentityError("kana_empty", "氏名（カナ）を入力してください", "enter the name in kana")
    with transaction.atomic(durable=True):
        locked = Resident.objects.select_for_update().get(pk=resident.pk)
        before = {"born": locked.born, "kana": locked.kana}
        if born is not None:
            locked.born = born
        if kana is not None:
            locked.kana = kana
        locked.save(update_fields=["born", "kana"])
        record(
            who=who,
            action="profile_declared",
            subject_type="resident",
            subject_id=locked.mykey_id,
            before=before,
            after={"born": locked.born, "kana": locked.kana},
            at=now,
        )
        return locked


def revoke_certificate(*, issuer: str, serial: str, now: dt.datetime, who: Actor) -> None:
    with transaction.atomic(durable=True):
        updated = Certificate.objects.filter(issuer=issuer, serial=serial, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if updated:
            record(
                who=who,
                action="certificate_revoked",
                subject_type="certificate",
                subject_id=f"{issuer}#{serial}",
                before={"revoked_at": None},
                after={"revoked_at": now},
                at=now,
            )


def decode_b64(value: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise IdentityError(
            "bad_base64", f"{what} の形式が正しくありません", f"{what} is not valid base64"
        ) from None
