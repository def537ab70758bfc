"""Fixtures for the JPKI layer: a test CA, a software card, a CRL, a verifier.  Time is fixed, never read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from mynapoint.identity.jpki.ca import TestCA, make_crl, make_test_ca
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.verify import InMemoryNonceStore, JpkiVerifier

FIXED_NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
TEST_PIN = "4071"


@pytest.fixture
def now() -> datetime:
    return FIXED_NOW


@pytest.fixture
def pin() -> str:
    return TEST_PIN


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return make_test_ca(now=FIXED_NOW - timedelta(days=365))


@pytest.fixture(scope="session")
def other_ca() -> TestCA:
    """A second CA with the *same name* as ``ca`` but another key: a forger's CA."""
    return make_test_ca(now=FIXED_NOW - timedelta(days=365))


@pytest.fixture
def card(ca: TestCA) -> SoftwareCard:
    return SoftwareCard.issue(ca=ca, pin=TEST_PIN, now=FIXED_NOW - timedelta(days=30))


@pytest.fixture
def crl(ca: TestCA) -> x509.CertificateRevocationList:
    return make_crl(ca=ca, now=FIXED_NOW - timedelta(hours=1), revoked=[12345, 67890])


@pytest.fixture
def nonce_store() -> InMemoryNonceStore:
    return InMemoryNonceStore(ttl=timedelta(minutes=5))


@pytest.fixture
def verifier(
    ca: TestCA, crl: x509.CertificateRevocationList, nonce_store: InMemoryNonceStore
) -> JpkiVerifier:
    return JpkiVerifier([ca.certificate], [crl], nonce_store=nonce_store)
