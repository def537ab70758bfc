"""Test-CA tooling for the JPKI user-authentication layer.

Real J-LIS CA certificates and revocation data are only available after a filing with J-LIS, so development,
tests and demos run against a *test* CA made here.  Everything is built with ``cryptography``.

Rules kept on purpose:

* a user-authentication certificate carries no personal data: the subject is ``C=JP`` plus a random token of
  letters (never digits, so it can never look like a 12-digit My Number), exactly like the real JPKI
  user-authentication certificate, which carries no name either;
* time is always an argument (``now``, timezone-aware); nothing here reads the clock;
* a CA lives in a directory as PEM files: ``ca.pem``, ``ca-key.pem`` (unencrypted, test keys only, mode 0600)
  and ``crl.pem``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CRL_FILE",
    "DEFAULT_CA_COMMON_NAME",
    "IssuedUserCertificate",
    "TestCA",
    "build_ocsp_response",
    "issue_user_certificate",
    "load_ca",
    "load_crl",
    "make_crl",
    "make_test_ca",
    "publish_crl",
    "save_ca",
]

DEFAULT_CA_COMMON_NAME = "JPKI user-authentication test CA"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CRL_FILE = "crl.pem"

RSA_KEY_SIZE = 2048
_PUBLIC_EXPONENT = 65537
# The real user-authentication certificate is valid until the holder's 5th birthday after issue; a flat
# 5 years is close enough for a test CA.
DEFAULT_USER_VALIDITY = timedelta(days=5 * 365)
DEFAULT_CA_VALIDITY = timedelta(days=10 * 365)
DEFAULT_CRL_VALIDITY = timedelta(days=1)
# Letters only (no I/O, no digits): a subject token can never contain a run of digits.
_SUBJECT_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_SUBJECT_LENGTH = 20  # 24**20 ~ 2**91
_DIGIT_RUN = re.compile(r"\d{12}")


class TestCA:
    """A test certification authority: its certificate and private key."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, *, certificate: x509.Certificate, private_key: rsa.RSAPrivateKey) -> None:
        public_key = certificate.public_key()
        if (
            not isinstance(public_key, rsa.RSAPublicKey)
            or public_key.public_numbers() != private_key.public_key().public_numbers()
        ):
            raise ValueError("the CA private key does not match the CA certificate")
        self.certificate = certificate
        self.private_key = private_key

    @property
    def name(self) -> x509.Name:
        return self.certificate.subject

    def __repr__(self) -> str:
        return f"TestCA({self.certificate.subject.rfc4514_string()!r})"


@dataclass(frozen=True)
class IssuedUserCertificate:
    """A user-authentication certificate and the private key that goes onto the (software) card."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")


def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=RSA_KEY_SIZE)


def _random_subject_token() -> str:
    return "".join(secrets.choice(_SUBJECT_LETTERS) for _ in range(_SUBJECT_LENGTH))


def _refuse_number_like(name: x509.Name) -> None:
    """Refuse any name attribute holding 12 digits in a row (a My Number must never reach a certificate)."""
    for attribute in name:
        value = attribute.value
        text = value if isinstance(value, str) else value.decode("latin-1")
        if _DIGIT_RUN.search(text):
            raise ValueError("a certificate name must not contain a 12-digit number")


def make_test_ca(
    *,
    now: datetime,
    common_name: str = DEFAULT_CA_COMMON_NAME,
    valid_for: timedelta = DEFAULT_CA_VALIDITY,
) -> TestCA:
    """Make a self-signed RSA-2048 root CA valid from ``now`` (backdated one minute) for ``valid_for``."""
    _require_aware(now, "now")
    key = _new_rsa_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mynapoint test PKI (not J-LIS)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    _refuse_number_like(name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TestCA(certificate=certificate, private_key=key)


def issue_user_certificate(
    *,
    ca: TestCA,
    now: datetime,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    crl_distribution_point: str | None = None,
    ocsp_url: str | None = None,
) -> IssuedUserCertificate:
    """Issue a user-authentication certificate with a fresh RSA-2048 key.

    The subject is ``C=JP, CN=<random letters>``: no name, no address, no date of birth and never a My Number.
    ``valid_from`` defaults to ``now`` less one minute, ``valid_until`` to ``now`` plus five years.
    """
    _require_aware(now, "now")
    not_before = valid_from if valid_from is not None else now - timedelta(minutes=1)
    not_after = valid_until if valid_until is not None else now + DEFAULT_USER_VALIDITY
    _require_aware(not_before, "valid_from")
    _require_aware(not_after, "valid_until")
    if not_after <= not_before:
        raise ValueError("valid_until must be later than valid_from")
    key = _new_rsa_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.COMMON_NAME, _random_subject_token()),
        ]
    )
    _refuse_number_like(subject)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if crl_distribution_point is not None:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(crl_distribution_point)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    if ocsp_url is not None:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    certificate = builder.sign(ca.private_key, hashes.SHA256())
    return IssuedUserCertificate(certificate=certificate, private_key=key)


def make_crl(
    *,
    ca: TestCA,
    now: datetime,
    revoked: Mapping[int, datetime] | Iterable[int] = (),
    valid_for: timedelta = DEFAULT_CRL_VALIDITY,
    crl_number: int = 1,
) -> x509.CertificateRevocationList:
    """Build a CRL signed by ``ca`` with thisUpdate ``now`` and nextUpdate ``now + valid_for``.

    ``revoked`` is either a mapping serial -> revocation date or just serials (revoked at ``now``).
    """
    _require_aware(now, "now")
    entries: dict[int, datetime] = (
        dict(revoked) if isinstance(revoked, Mapping) else dict.fromkeys(revoked, now)
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + valid_for)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False
        )
    )
    for serial, when in sorted(entries.items()):
        _require_aware(when, "revocation date")
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.private_key, hashes.SHA256())


def build_ocsp_response(
    *,
    ca: TestCA,
    certificate: x509.Certificate,
    now: datetime,
    revoked_at: datetime | None = None,
    valid_for: timedelta = DEFAULT_CRL_VALIDITY,
) -> ocsp.OCSPResponse:
    """Build an OCSP response for ``certificate``, signed directly by the CA (no delegated responder)."""
    _require_aware(now, "now")
    status = ocsp.OCSPCertStatus.GOOD if revoked_at is None else ocsp.OCSPCertStatus.REVOKED
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=certificate,
            issuer=ca.certificate,
            algorithm=hashes.SHA256(),
            cert_status=status,
            this_update=now,
            next_update=now + valid_for,
            revocation_time=revoked_at,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.certificate)
    )
    return builder.sign(ca.private_key, hashes.SHA256())


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_ca(ca: TestCA, directory: Path) -> None:
    """Write ``ca.pem`` and ``ca-key.pem`` (mode 0600, unencrypted: test keys only) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_public(directory / CA_CERT_FILE, ca.certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(
        directory / CA_KEY_FILE,
        ca.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def load_ca(directory: Path) -> TestCA:
    certificate = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{directory / CA_KEY_FILE} does not hold an RSA private key")
    return TestCA(certificate=certificate, private_key=key)


def publish_crl(
    *,
    ca: TestCA,
    directory: Path,
    now: datetime,
    revoked: Mapping[int, datetime] | Iterable[int] = (),
    valid_for: timedelta = DEFAULT_CRL_VALIDITY,
    crl_number: int = 1,
) -> x509.CertificateRevocationList:
    """Make a CRL (see :func:`make_crl`) and write it to ``directory/crl.pem``."""
    crl = make_crl(ca=ca, now=now, revoked=revoked, valid_for=valid_for, crl_number=crl_number)
    directory.mkdir(parents=True, exist_ok=True)
    _write_public(directory / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def load_crl(directory: Path) -> x509.CertificateRevocationList | None:
    """The CRL in ``directory/crl.pem``, or ``None`` when none was published."""
    path = directory / CRL_FILE
    if not path.exists():
        return None
    return x509.load_pem_x509_crl(path.read_bytes())
