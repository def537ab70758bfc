from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mynapoint.identity.jpki import verify as v
from mynapoint.identity.jpki.ca import (
    TestCA,
    build_ocsp_response,
    issue_user_certificate,
    make_crl,
    make_test_ca,
)
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient
from mynapoint.identity.jpki.verify import (
    InMemoryNonceStore,
    JpkiVerifier,
    LoginRejected,
    StaticCrlProvider,
    StaticOcspChecker,
)


def _login(
    verifier: JpkiVerifier, store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> v.VerifiedIdentity:
    nonce = store.issue(now=now)
    response = JpkiClient(card).login(nonce, pin)
    return verifier.verify_login(
        certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
    )


def _rejected(code: str, call: object) -> LoginRejected:
    assert callable(call)
    with pytest.raises(LoginRejected) as caught:
        call()
    assert caught.value.code == code, caught.value
    return caught.value


def test_full_login_round_trip(
    verifier: JpkiVerifier,
    nonce_store: InMemoryNonceStore,
    card: SoftwareCard,
    pin: str,
    now: datetime,
    ca: TestCA,
) -> None:
    identity = _login(verifier, nonce_store, card, pin, now)
    cert = x509.load_der_x509_certificate(card.certificate_der)
    assert identity.issuer == ca.certificate.subject.rfc4514_string()
    assert identity.serial == cert.serial_number
    assert identity.not_after == cert.not_valid_after_utc
    assert identity.key == f"{identity.issuer}#{identity.serial_hex}"
    assert int(identity.serial_hex.replace(":", ""), 16) == cert.serial_number
    assert not re.search(r"\d{12}", identity.key)


def test_identity_key_never_holds_a_twelve_digit_run() -> None:
    # a serial whose plain decimal and hex spellings are both digit runs
    identity = v.VerifiedIdentity(
        issuer="CN=x", serial=int("123456789012345678", 16), not_after=datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert identity.serial_hex == "12:34:56:78:90:12:34:56:78"
    assert not re.search(r"\d{12}", identity.key)


def test_replayed_nonce_is_refused(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    nonce = nonce_store.issue(now=now)
    response = JpkiClient(card).login(nonce, pin)

    def again() -> v.VerifiedIdentity:
        return verifier.verify_login(
            certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
        )

    again()
    _rejected("nonce_unknown_or_used", again)


def test_unknown_nonce_is_refused(
    verifier: JpkiVerifier, card: SoftwareCard, pin: str, now: datetime
) -> None:
    nonce = b"\x00" * 32  # never issued
    response = JpkiClient(card).login(nonce, pin)
    _rejected(
        "nonce_unknown_or_used",
        lambda: verifier.verify_login(
            certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
        ),
    )


def test_expired_nonce_is_refused(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    nonce = nonce_store.issue(now=now - timedelta(minutes=10))
    response = JpkiClient(card).login(nonce, pin)
    error = _rejected(
        "nonce_expired",
        lambda: verifier.verify_login(
            certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
        ),
    )
    assert "有効時間" in error.message_ja


def test_a_failed_login_still_uses_the_nonce(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    nonce = nonce_store.issue(now=now)
    response = JpkiClient(card).login(nonce, pin)
    _rejected(
        "bad_signature",
        lambda: verifier.verify_login(
            certificate_der=response.certificate_der, signature=bytes(256), nonce=nonce, now=now
        ),
    )
    _rejected(
        "nonce_unknown_or_used",
        lambda: verifier.verify_login(
            certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
        ),
    )


def test_bad_signature(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    nonce = nonce_store.issue(now=now)
    response = JpkiClient(card).login(b"a different challenge", pin)
    _rejected(
        "bad_signature",
        lambda: verifier.verify_login(
            certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
        ),
    )


def test_signature_by_another_card(
    verifier: JpkiVerifier,
    nonce_store: InMemoryNonceStore,
    card: SoftwareCard,
    pin: str,
    ca: TestCA,
    now: datetime,
) -> None:
    other = SoftwareCard.issue(ca=ca, pin=pin, now=now - timedelta(days=1))
    nonce = nonce_store.issue(now=now)
    signature = JpkiClient(other).sign(nonce, pin)
    _rejected(
        "bad_signature",
        lambda: verifier.verify_login(
            certificate_der=card.certificate_der, signature=signature, nonce=nonce, now=now
        ),
    )


def test_certificate_from_another_ca_with_the_same_name(
    verifier: JpkiVerifier,
    nonce_store: InMemoryNonceStore,
    other_ca: TestCA,
    ca: TestCA,
    pin: str,
    now: datetime,
) -> None:
    assert other_ca.certificate.subject == ca.certificate.subject
    forged = SoftwareCard.issue(ca=other_ca, pin=pin, now=now - timedelta(days=1))
    error = _rejected("chain_invalid", lambda: _login(verifier, nonce_store, forged, pin, now))
    assert error.message_en
    assert error.message_ja


def test_certificate_from_an_unrelated_ca(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, pin: str, now: datetime
) -> None:
    stranger = make_test_ca(now=now - timedelta(days=10), common_name="Some other CA")
    card = SoftwareCard.issue(ca=stranger, pin=pin, now=now - timedelta(days=1))
    _rejected("chain_invalid", lambda: _login(verifier, nonce_store, card, pin, now))


def test_expired_certificate(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    later = x509.load_der_x509_certificate(card.certificate_der).not_valid_after_utc + timedelta(seconds=1)
    error = _rejected("expired", lambda: _login(verifier, nonce_store, card, pin, later))
    assert "有効期限" in error.message_ja


def test_not_yet_valid_certificate(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str
) -> None:
    earlier = x509.load_der_x509_certificate(card.certificate_der).not_valid_before_utc - timedelta(seconds=1)
    _rejected("not_yet_valid", lambda: _login(verifier, nonce_store, card, pin, earlier))


def test_revoked_certificate(
    ca: TestCA, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    serial = x509.load_der_x509_certificate(card.certificate_der).serial_number
    crl = make_crl(ca=ca, now=now - timedelta(hours=1), revoked=[1, serial, 2])
    verifier = JpkiVerifier([ca.certificate], [crl], nonce_store=nonce_store)
    error = _rejected("revoked", lambda: _login(verifier, nonce_store, card, pin, now))
    assert "失効" in error.message_ja


def test_the_newest_current_crl_decides(
    ca: TestCA, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    serial = x509.load_der_x509_certificate(card.certificate_der).serial_number
    older = make_crl(ca=ca, now=now - timedelta(hours=5), crl_number=1)
    newer = make_crl(ca=ca, now=now - timedelta(hours=1), revoked=[serial], crl_number=2)
    provider = StaticCrlProvider([newer, older])
    verifier = JpkiVerifier([ca.certificate], provider, nonce_store=nonce_store)
    _rejected("revoked", lambda: _login(verifier, nonce_store, card, pin, now))
    provider.replace([older])
    assert _login(verifier, nonce_store, card, pin, now).serial == serial


def test_missing_crl_fails_closed(
    ca: TestCA, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    verifier = JpkiVerifier([ca.certificate], [], nonce_store=nonce_store)
    error = _rejected("crl_unavailable", lambda: _login(verifier, nonce_store, card, pin, now))
    assert "fail closed" in error.message_en


def test_expired_crl_fails_closed(
    ca: TestCA, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    stale = make_crl(ca=ca, now=now - timedelta(days=2), valid_for=timedelta(days=1))
    verifier = JpkiVerifier([ca.certificate], [stale], nonce_store=nonce_store)
    _rejected("crl_unavailable", lambda: _login(verifier, nonce_store, card, pin, now))


def test_crl_from_the_future_is_not_current(
    ca: TestCA, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    future = make_crl(ca=ca, now=now + timedelta(hours=1))
    verifier = JpkiVerifier([ca.certificate], [future], nonce_store=nonce_store)
    _rejected("crl_unavailable", lambda: _login(verifier, nonce_store, card, pin, now))


def test_crl_signed_by_another_key_is_ignored(
    ca: TestCA, other_ca: TestCA, nonce_store: InMemoryNonceStore, card: SoftwareCard, pin: str, now: datetime
) -> None:
    forged = make_crl(ca=other_ca, now=now - timedelta(hours=1))  # same issuer name, wrong key
    assert forged.issuer == ca.certificate.subject
    verifier = JpkiVerifier([ca.certificate], [forged], nonce_store=nonce_store)
    _rejected("crl_unavailable", lambda: _login(verifier, nonce_store, card, pin, now))


def test_ca_certificate_presented_as_the_user_certificate(
    verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, ca: TestCA, now: datetime
) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    nonce = nonce_store.issue(now=now)
    signature = ca.private_key.sign(nonce, padding.PKCS1v15(), hashes.SHA256())
    _rejected(
        "certificate_invalid",
        lambda: verifier.verify_login(
            certificate_der=ca.certificate.public_bytes(serialization.Encoding.DER),
            signature=signature,
            nonce=nonce,
            now=now,
        ),
    )


def test_garbage_certificate(verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, now: datetime) -> None:
    nonce = nonce_store.issue(now=now)
    _rejected(
        "certificate_invalid",
        lambda: verifier.verify_login(
            certificate_der=b"\x30\x03\x02\x01\x01", signature=b"", nonce=nonce, now=now
        ),
    )


def test_ocsp_good_revoked_and_missing(
    ca: TestCA, crl: x509.CertificateRevocationList, nonce_store: InMemoryNonceStore, pin: str, now: datetime
) -> None:
    card = SoftwareCard.issue(ca=ca, pin=pin, now=now - timedelta(days=1))
    cert = x509.load_der_x509_certificate(card.certificate_der)
    checker = StaticOcspChecker()
    verifier = JpkiVerifier([ca.certificate], [crl], checker, nonce_store=nonce_store)
    _rejected("ocsp_unavailable", lambda: _login(verifier, nonce_store, card, pin, now))
    checker.add(
        build_ocsp_response(
            ca=ca, certificate=cert, now=now - timedelta(minutes=5), valid_for=timedelta(minutes=10)
        )
    )
    assert _login(verifier, nonce_store, card, pin, now).serial == cert.serial_number
    stale = now + timedelta(minutes=20)  # the OCSP answer is no longer current; the CRL still is
    _rejected("ocsp_unavailable", lambda: _login(verifier, nonce_store, card, pin, stale))
    checker.add(build_ocsp_response(ca=ca, certificate=cert, now=now, revoked_at=now - timedelta(minutes=1)))
    _rejected("revoked", lambda: _login(verifier, nonce_store, card, pin, now))


def test_ocsp_response_signed_by_another_key(
    ca: TestCA,
    other_ca: TestCA,
    crl: x509.CertificateRevocationList,
    nonce_store: InMemoryNonceStore,
    card: SoftwareCard,
    pin: str,
    now: datetime,
) -> None:
    cert = x509.load_der_x509_certificate(card.certificate_der)
    forged = build_ocsp_response(ca=other_ca, certificate=cert, now=now)
    verifier = JpkiVerifier([ca.certificate], [crl], StaticOcspChecker([forged]), nonce_store=nonce_store)
    _rejected("ocsp_unavailable", lambda: _login(verifier, nonce_store, card, pin, now))


def test_every_error_has_a_distinct_code_and_both_messages() -> None:
    classes = [
        v.CertificateInvalid,
        v.ChainInvalid,
        v.CertificateExpired,
        v.CertificateNotYetValid,
        v.BadSignature,
        v.CertificateRevoked,
        v.CrlUnavailable,
        v.OcspUnavailable,
        v.NonceUnknownOrUsed,
        v.NonceExpired,
    ]
    codes = {cls.code for cls in classes}
    assert len(codes) == len(classes)
    assert codes >= {
        "chain_invalid",
        "expired",
        "not_yet_valid",
        "bad_signature",
        "revoked",
        "crl_unavailable",
        "nonce_unknown_or_used",
        "nonce_expired",
    }
    for cls in classes:
        assert issubclass(cls, LoginRejected)
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", cls.message_ja), cls
        assert cls.message_en.isascii()
        error = cls("detail")
        assert str(error).startswith(f"{cls.code}: ")


def test_nonce_store_basics(now: datetime) -> None:
    store = InMemoryNonceStore(ttl=timedelta(seconds=30), max_outstanding=2)
    first = store.issue(now=now)
    second = store.issue(now=now)
    assert first != second
    assert len(first) == 32
    with pytest.raises(RuntimeError):
        store.issue(now=now)  # too many outstanding, none expired
    store.consume(first, now=now + timedelta(seconds=29))
    with pytest.raises(v.NonceUnknownOrUsed):
        store.consume(first, now=now)
    later = now + timedelta(minutes=5)
    third = store.issue(now=later)
    fourth = store.issue(now=later)  # the store is full: the expired ``second`` is purged to make room
    assert len(store) == 2
    with pytest.raises(v.NonceUnknownOrUsed):
        store.consume(second, now=later)
    store.consume(third, now=later)
    with pytest.raises(v.NonceExpired):
        store.consume(fourth, now=later + timedelta(seconds=30))
    assert len(store) == 0


def test_verifier_needs_an_aware_now(verifier: JpkiVerifier) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verifier.verify_login(
            certificate_der=b"",
            signature=b"",
            nonce=b"",
            now=datetime(2026, 1, 1),  # noqa: DTZ001 - the point of the test
        )


def test_user_certificate_without_crl_distribution_point_is_fine(
    ca: TestCA, verifier: JpkiVerifier, nonce_store: InMemoryNonceStore, now: datetime
) -> None:
    issued = issue_user_certificate(ca=ca, now=now - timedelta(days=1), ocsp_url="http://ocsp.test.invalid")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    nonce = nonce_store.issue(now=now)
    signature = issued.private_key.sign(nonce, padding.PKCS1v15(), hashes.SHA256())
    identity = verifier.verify_login(
        certificate_der=issued.certificate_der, signature=signature, nonce=nonce, now=now
    )
    assert identity.serial == issued.certificate.serial_number
