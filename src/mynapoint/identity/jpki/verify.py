"""Server side of a JPKI login: single-use nonces and the certificate + signature + revocation check.

Flow: the server issues a nonce (:class:`NonceStore`), the resident's card signs SHA-256(nonce) with the
user-authentication key, and :meth:`JpkiVerifier.verify_login` checks, in this order:

1. the nonce is known, unused and unexpired (it is consumed whatever the outcome, so it is never replayed);
2. the certificate parses, is an end-entity certificate with an RSA key usable for digital signatures;
3. its validity period covers ``now``;
4. it chains to one of the configured trust anchors;
5. the signature is RSA PKCS#1 v1.5 with SHA-256 over the nonce;
6. the issuer's CRL is present, correctly signed, current at ``now`` and does not list the serial (fail
   closed: no current CRL, no login);
7. if an OCSP checker is configured, OCSP says "good" (also fail closed).

Every failure raises a :class:`LoginRejected` subclass carrying a stable ``code`` and a Japanese and an
English message.  The resident is identified by issuer + serial of the certificate; no personal data is read.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

__all__ = [
    "BadSignature",
    "CertificateExpired",
    "CertificateInvalid",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "ChainInvalid",
    "CrlProvider",
    "CrlUnavailable",
    "InMemoryNonceStore",
    "JpkiVerifier",
    "LoginRejected",
    "NonceExpired",
    "NonceStore",
    "NonceUnknownOrUsed",
    "OcspChecker",
    "OcspUnavailable",
    "StaticCrlProvider",
    "StaticOcspChecker",
    "VerifiedIdentity",
]


# ------------------------------------------------------------------------------------------------- errors
_REVOCATION_UNKNOWN_JA = (
    "電子証明書の失効情報を確認できないため、ログインできません。しばらくしてからお試しください。"
)


class LoginRejected(Exception):  # noqa: N818 - subclasses are named after the failure
    """A login failed verification.  ``code`` is stable (for logs, metrics and API responses)."""

    code: ClassVar[str] = "login_rejected"
    message_ja: ClassVar[str] = "ログインできませんでした。"
    message_en: ClassVar[str] = "The login was rejected."

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail
        text = f"{self.code}: {self.message_en}"
        super().__init__(f"{text} ({detail})" if detail else text)


class CertificateInvalid(LoginRejected):
    code = "certificate_invalid"
    message_ja = "電子証明書を読み取れないか、利用者証明用電子証明書ではありません。"
    message_en = "The certificate cannot be parsed or is not a user-authentication certificate."


class ChainInvalid(LoginRejected):
    code = "chain_invalid"
    message_ja = "電子証明書の発行元を確認できませんでした。"
    message_en = "The certificate does not chain to a trusted JPKI CA."


class CertificateExpired(LoginRejected):
    code = "expired"
    message_ja = (
        "利用者証明用電子証明書の有効期限が切れています。お住まいの市区町村の窓口で更新してください。"
    )
    message_en = "The user-authentication certificate has expired; it is renewed at the municipal office."


class CertificateNotYetValid(LoginRejected):
    code = "not_yet_valid"
    message_ja = "電子証明書の有効期間がまだ始まっていません。"
    message_en = "The certificate is not valid yet."


class BadSignature(LoginRejected):
    code = "bad_signature"
    message_ja = "電子署名を確認できませんでした。もう一度最初からお試しください。"
    message_en = "The signature over the login challenge does not verify."


class CertificateRevoked(LoginRejected):
    code = "revoked"
    message_ja = "この電子証明書は失効しています。お住まいの市区町村の窓口にお問い合わせください。"
    message_en = "The certificate has been revoked."


class CrlUnavailable(LoginRejected):
    code = "crl_unavailable"
    message_ja = _REVOCATION_UNKNOWN_JA
    message_en = "No current, valid CRL for the issuing CA: revocation cannot be checked (fail closed)."


class OcspUnavailable(LoginRejected):
    code = "ocsp_unavailable"
    message_ja = _REVOCATION_UNKNOWN_JA
    message_en = "No usable OCSP answer for the certificate (fail closed)."


class NonceUnknownOrUsed(LoginRejected):
    code = "nonce_unknown_or_used"
    message_ja = "このログイン要求は無効か、すでに使われています。もう一度最初からお試しください。"
    message_en = "The login challenge is unknown or was already used (possible replay)."


class NonceExpired(LoginRejected):
    code = "nonce_expired"
    message_ja = "ログインの有効時間が過ぎました。もう一度最初からお試しください。"
    message_en = "The login challenge has expired."


# ------------------------------------------------------------------------------------------------- nonces
class NonceStore(Protocol):
    """Issues single-use login challenges."""

    def issue(self, *, now: datetime) -> bytes: ...

    def consume(self, nonce: bytes, *, now: datetime) -> None:
        """Use ``nonce`` up; raise :class:`NonceUnknownOrUsed` or :class:`NonceExpired`."""
        ...


class InMemoryNonceStore:
    """A process-local :class:`NonceStore` (one server process, tests, demos).  Thread-safe."""

    def __init__(
        self,
        *,
        ttl: timedelta = timedelta(minutes=5),
        nonce_bytes: int = 32,
        max_outstanding: int = 1_000_000,
    ) -> None:
        if nonce_bytes < 16:
            raise ValueError("a nonce needs at least 128 bits")
        self._ttl = ttl
        self._nonce_bytes = nonce_bytes
        self._max_outstanding = max_outstanding
        self._expiry: dict[bytes, datetime] = {}
        self._lock = threading.Lock()

    def issue(self, *, now: datetime) -> bytes:
        nonce = secrets.token_bytes(self._nonce_bytes)
        with self._lock:
            if len(self._expiry) >= self._max_outstanding:
                self._purge(now)
                if len(self._expiry) >= self._max_outstanding:
                    raise RuntimeError("too many outstanding login challenges")
            self._expiry[nonce] = now + self._ttl
        return nonce

    def consume(self, nonce: bytes, *, now: datetime) -> None:
        with self._lock:
            expiry = self._expiry.pop(bytes(nonce), None)
        if expiry is None:
            raise NonceUnknownOrUsed()
        if now >= expiry:
            raise NonceExpired()

    def _purge(self, now: datetime) -> None:
        for nonce in [n for n, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[nonce]

    def __len__(self) -> int:
        return len(self._expiry)


# ----------------------------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class VerifiedIdentity:
    """Who logged in: the certificate's issuer (RFC 4514) and serial.  No personal data."""

    issuer: str
    serial: int
    not_after: datetime

    @property
    def serial_hex(self) -> str:
        """The serial as colon-separated hex bytes (``3f:a9:...``): never a run of 12 digits."""
        length = max(1, (self.serial.bit_length() + 7) // 8)
        return self.serial.to_bytes(length, "big").hex(":")

    @property
    def key(self) -> str:
        """A stable account key: issuer + ``#`` + :attr:`serial_hex`."""
        return f"{self.issuer}#{self.serial_hex}"


# --------------------------------------------------------------------------------------------- revocation
@runtime_checkable
class CrlProvider(Protocol):
    def crls_for(self, issuer: x509.Name) -> Sequence[x509.CertificateRevocationList]: ...


class StaticCrlProvider:
    """CRLs held in memory; :meth:`replace` swaps them (e.g. after a periodic download)."""

    def __init__(self, crls: Iterable[x509.CertificateRevocationList] = ()) -> None:
        self._by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        self.replace(crls)

    def replace(self, crls: Iterable[x509.CertificateRevocationList]) -> None:
        by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            by_issuer.setdefault(crl.issuer, []).append(crl)
        self._by_issuer = by_issuer

    def crls_for(self, issuer: x509.Name) -> Sequence[x509.CertificateRevocationList]:
        return tuple(self._by_issuer.get(issuer, ()))


class OcspChecker(Protocol):
    def check(self, *, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
        """Return if OCSP says "good"; raise :class:`CertificateRevoked` or :class:`OcspUnavailable`."""
        ...


class StaticOcspChecker:
    """Checks prefetched OCSP responses (e.g. stapled or fetched by a separate job) keyed by serial.

    A response must be successful, signed by the issuing CA itself, about this serial and issuer, and
    current at ``now``.
    """

    def __init__(self, responses: Iterable[ocsp.OCSPResponse] = ()) -> None:
        self._by_serial: dict[int, ocsp.OCSPResponse] = {}
        for response in responses:
            self.add(response)

    def add(self, response: ocsp.OCSPResponse) -> None:
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise ValueError("only successful OCSP responses can be stored")
        self._by_serial[response.serial_number] = response

    def check(self, *, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
        response = self._by_serial.get(certificate.serial_number)
        if response is None:
            raise OcspUnavailable("no OCSP response for this serial")
        issuer_key = issuer.public_key()
        if not isinstance(issuer_key, rsa.RSAPublicKey) or response.signature_hash_algorithm is None:
            raise OcspUnavailable("unsupported OCSP responder key or signature algorithm")
        try:
            issuer_key.verify(
                response.signature,
                response.tbs_response_bytes,
                padding.PKCS1v15(),
                response.signature_hash_algorithm,
            )
        except InvalidSignature:
            raise OcspUnavailable("OCSP response not signed by the issuing CA") from None
        expected = (
            ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, response.hash_algorithm).build()
        )
        if (
            response.issuer_key_hash != expected.issuer_key_hash
            or response.issuer_name_hash != expected.issuer_name_hash
        ):
            raise OcspUnavailable("OCSP response is about another issuer")
        next_update = response.next_update_utc
        if response.this_update_utc > now or next_update is None or now >= next_update:
            raise OcspUnavailable("OCSP response is not current")
        if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            raise CertificateRevoked("OCSP")
        if response.certificate_status != ocsp.OCSPCertStatus.GOOD:
            raise OcspUnavailable("OCSP status unknown")


# ---------------------------------------------------------------------------------------------- verifier
_CRL_CACHE_SIZE = 64


class JpkiVerifier:
    """Verifies JPKI user-authentication logins against a fixed set of trust anchors.

    ``crls`` is either CRLs (held in a :class:`StaticCrlProvider`) or any :class:`CrlProvider`.  A current CRL
    for the issuing CA is required for every login.  ``nonce_store`` is required too: every login consumes
    its nonce, which is what makes replays fail.
    """

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] | CrlProvider,
        ocsp_checker: OcspChecker | None = None,
        *,
        nonce_store: NonceStore,
    ) -> None:
        if not trust_anchors:
            raise ValueError("at least one trust anchor is needed")
        self._anchors = list(trust_anchors)
        self._store = Store(self._anchors)
        self._crls: CrlProvider = crls if isinstance(crls, CrlProvider) else StaticCrlProvider(crls)
        self._ocsp = ocsp_checker
        self._nonces = nonce_store
        # Per-CRL facts that cost an RSA verify or a scan, cached by CRL fingerprint.
        self._crl_cache: dict[
            tuple[int, bytes], tuple[x509.CertificateRevocationList, frozenset[int] | None]
        ] = {}
        self._crl_cache_lock = threading.Lock()

    def verify_login(
        self, *, certificate_der: bytes, signature: bytes, nonce: bytes, now: datetime
    ) -> VerifiedIdentity:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        self._nonces.consume(nonce, now=now)
        certificate = self._parse(certificate_der)
        if now < certificate.not_valid_before_utc:
            raise CertificateNotYetValid()
        if now > certificate.not_valid_after_utc:
            raise CertificateExpired()
        issuer = self._chain(certificate, now)
        self._check_signature(certificate, signature, nonce)
        self._check_crl(certificate, issuer, now)
        if self._ocsp is not None:
            self._ocsp.check(certificate=certificate, issuer=issuer, now=now)
        return VerifiedIdentity(
            issuer=certificate.issuer.rfc4514_string(),
            serial=certificate.serial_number,
            not_after=certificate.not_valid_after_utc,
        )

    @staticmethod
    def _parse(certificate_der: bytes) -> x509.Certificate:
        try:
            certificate = x509.load_der_x509_certificate(certificate_der)
        except ValueError:
            raise CertificateInvalid("not a DER X.509 certificate") from None
        if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
            raise CertificateInvalid("not an RSA key")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is not None and constraints.ca:
            # The policy builder accepts a trust anchor presented as the leaf: refuse CA certificates here.
            raise CertificateInvalid("a CA certificate is not a user certificate")
        try:
            key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            key_usage = None
        if key_usage is not None and not key_usage.digital_signature:
            raise CertificateInvalid("key usage does not allow digital signatures")
        return certificate

    def _chain(self, certificate: x509.Certificate, now: datetime) -> x509.Certificate:
        # cryptography's path builder checks the chain (issuer signature, CA validity, CA extensions).  JPKI
        # user certificates lack Web-PKI extensions (no SAN, no EKU), so the end-entity policy is permit_all
        # while the CA keeps the Web-PKI CA profile (basicConstraints CA, keyCertSign).  permit_all would also
        # accept a CA certificate presented as the leaf: _parse refuses those.
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(
                ee_policy=ExtensionPolicy.permit_all(), ca_policy=ExtensionPolicy.webpki_defaults_ca()
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(certificate, [])
        except VerificationError as exc:
            raise ChainInvalid(str(exc)) from None
        return verified.chain[1]

    @staticmethod
    def _check_signature(certificate: x509.Certificate, signature: bytes, nonce: bytes) -> None:
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):  # already refused in _parse; keeps the type checker sure
            raise CertificateInvalid("not an RSA key")
        try:
            key.verify(signature, nonce, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise BadSignature() from None

    def _check_crl(self, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
        current: list[tuple[x509.CertificateRevocationList, frozenset[int]]] = []
        for crl in self._crls.crls_for(issuer.subject):
            next_update = crl.next_update_utc
            if next_update is None or not crl.last_update_utc <= now < next_update:
                continue
            revoked = self._revoked_serials(crl, issuer)
            if revoked is not None:
                current.append((crl, revoked))
        if not current:
            raise CrlUnavailable()
        _, newest = max(current, key=lambda item: item[0].last_update_utc)
        if certificate.serial_number in newest:
            raise CertificateRevoked("CRL")

    def _revoked_serials(
        self, crl: x509.CertificateRevocationList, issuer: x509.Certificate
    ) -> frozenset[int] | None:
        """The CRL's revoked serials, or ``None`` when it is not signed by ``issuer``.

        Cached per CRL object (checking the signature and building the set are done once per CRL, not per
        login); the cached entry keeps the CRL alive, so its ``id`` cannot be reused while cached.
        """
        cache_key = (id(crl), issuer.fingerprint(hashes.SHA256()))
        with self._crl_cache_lock:
            cached = self._crl_cache.get(cache_key)
        if cached is not None and cached[0] is crl:
            return cached[1]
        issuer_key = issuer.public_key()
        valid = isinstance(issuer_key, rsa.RSAPublicKey) and crl.is_signature_valid(issuer_key)
        result = frozenset(entry.serial_number for entry in crl) if valid else None
        with self._crl_cache_lock:
            if len(self._crl_cache) >= _CRL_CACHE_SIZE:
                self._crl_cache.clear()
            self._crl_cache[cache_key] = (crl, result)
        return result
