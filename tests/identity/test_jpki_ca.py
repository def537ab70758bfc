from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from mynapoint.identity.jpki.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CRL_FILE,
    DEFAULT_CA_COMMON_NAME,
    TestCA,
    build_ocsp_response,
    issue_user_certificate,
    load_ca,
    load_crl,
    make_crl,
    make_test_ca,
    publish_crl,
    save_ca,
)


def test_make_test_ca_is_a_self_signed_rsa2048_root(ca: TestCA) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEFAULT_CA_COMMON_NAME
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(cert)


def test_time_must_be_timezone_aware() -> None:
    naive = datetime(2026, 11, 20, 9, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        make_test_ca(now=naive)


def test_issued_user_certificate_chains_and_carries_no_personal_data(ca: TestCA, now: datetime) -> None:
    issued = issue_user_certificate(ca=ca, now=now)
    cert = issued.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.issuer == ca.certificate.subject
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    assert key.public_numbers() == issued.private_key.public_key().public_numbers()
    assert {attribute.oid for attribute in cert.subject} == {NameOID.COUNTRY_NAME, NameOID.COMMON_NAME}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert issued.certificate_der == cert.public_bytes(serialization.Encoding.DER)


def test_no_twelve_digit_number_ever_appears_in_a_subject(ca: TestCA, now: datetime) -> None:
    twelve_digits = re.compile(r"\d{12}")
    for _ in range(25):
        cert = issue_user_certificate(ca=ca, now=now).certificate
        assert not twelve_digits.search(cert.subject.rfc4514_string())
        for attribute in cert.subject:
            assert not twelve_digits.search(str(attribute.value))
    # the serial number is random and distinct per certificate
    serials = {issue_user_certificate(ca=ca, now=now).certificate.serial_number for _ in range(3)}
    assert len(serials) == 3


def test_a_ca_name_with_a_twelve_digit_number_is_refused(now: datetime) -> None:
    with pytest.raises(ValueError, match="12-digit"):
        make_test_ca(now=now, common_name="CA " + "".join(str(i % 10) for i in range(1, 13)))


def test_explicit_validity_window(ca: TestCA, now: datetime) -> None:
    start = now - timedelta(days=10)
    end = now - timedelta(days=1)
    cert = issue_user_certificate(ca=ca, now=now, valid_from=start, valid_until=end).certificate
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == end
    with pytest.raises(ValueError, match="later"):
        issue_user_certificate(ca=ca, now=now, valid_from=end, valid_until=start)


def test_crl_lists_revoked_serials_with_this_and_next_update(ca: TestCA, now: datetime) -> None:
    revoked_at = now - timedelta(days=2)
    crl = make_crl(ca=ca, now=now, revoked={111: revoked_at, 222: now}, valid_for=timedelta(hours=6))
    assert crl.issuer == ca.certificate.subject
    assert crl.last_update_utc == now
    assert crl.next_update_utc == now + timedelta(hours=6)
    assert crl.is_signature_valid(ca.private_key.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(111)
    assert entry is not None
    assert entry.revocation_date_utc == revoked_at
    assert crl.get_revoked_certificate_by_serial_number(333) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1


def test_ca_directory_round_trip(tmp_path: Path, now: datetime) -> None:
    ca = make_test_ca(now=now)
    directory = tmp_path / "test-ca"
    save_ca(ca, directory)
    assert load_crl(directory) is None
    crl = publish_crl(ca=ca, directory=directory, now=now, revoked=[42])
    assert {p.name for p in directory.iterdir()} == {CA_CERT_FILE, CA_KEY_FILE, CRL_FILE}
    assert stat.S_IMODE((directory / CA_KEY_FILE).stat().st_mode) == 0o600
    loaded = load_ca(directory)
    assert loaded.certificate == ca.certificate
    assert loaded.private_key.private_numbers() == ca.private_key.private_numbers()
    loaded_crl = load_crl(directory)
    assert loaded_crl == crl
    assert loaded_crl is not None
    assert loaded_crl.get_revoked_certificate_by_serial_number(42) is not None
    # A CA loaded from disk keeps issuing certificates that chain to it.
    issue_user_certificate(ca=loaded, now=now).certificate.verify_directly_issued_by(ca.certificate)


def test_mismatched_ca_key_is_refused(ca: TestCA, other_ca: TestCA) -> None:
    with pytest.raises(ValueError, match="does not match"):
        TestCA(certificate=ca.certificate, private_key=other_ca.private_key)


def test_ocsp_response_good_and_revoked(ca: TestCA, now: datetime) -> None:
    cert = issue_user_certificate(ca=ca, now=now).certificate
    good = build_ocsp_response(ca=ca, certificate=cert, now=now)
    assert good.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == cert.serial_number
    revoked = build_ocsp_response(ca=ca, certificate=cert, now=now, revoked_at=now - timedelta(hours=1))
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_time_utc == now - timedelta(hours=1)
    # survives DER serialisation
    again = ocsp.load_der_ocsp_response(revoked.public_bytes(serialization.Encoding.DER))
    assert again.certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_optional_crl_distribution_point_and_ocsp_url(ca: TestCA) -> None:
    now = datetime(2026, 1, 5, tzinfo=UTC)
    cert = issue_user_certificate(
        ca=ca,
        now=now,
        crl_distribution_point="http://crl.test.invalid/a.crl",
        ocsp_url="http://ocsp.test.invalid",
    ).certificate
    assert cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
