"""The JPKI trust configuration: trusted CA certificates and their CRLs, read from a folder.

A folder holds ``*.pem`` CA certificates (``ca.pem`` from ``mynapoint jpki make-test-ca``) and their CRLs
(``crl*.pem``). CRLs are re-read when their files change, so publishing a new CRL takes effect at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mynapoint.identity.jpki.verify import CrlProvider

__all__ = ["FolderCrlProvider", "TrustConfigurationError", "load_trust_anchors"]


class TrustConfigurationError(RuntimeError):
    pass


def load_trust_anchors(folder: Path) -> list[x509.Certificate]:
    if not folder.is_dir():
        raise TrustConfigurationError(
            f"JPKI trust folder {folder} does not exist: run `mynapoint jpki make-test-ca {folder}` "
            "or set MYNAPOINT_JPKI_TRUST_DIR"
        )
    anchors = []
    for path in sorted(folder.glob("*.pem")):
        if path.name.startswith("crl") or path.name.endswith("-key.pem"):
            continue
        anchors.extend(x509.load_pem_x509_certificates(path.read_bytes()))
    if not anchors:
        raise TrustConfigurationError(f"no CA certificate (*.pem) in {folder}")
    return anchors


@dataclass
class _Cached:
    mtime: float
    crls: list[x509.CertificateRevocationList]


class FolderCrlProvider(CrlProvider):
    """CRLs from ``crl*.pem`` files in a folder, re-read when a file changes."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._cache: dict[Path, _Cached] = {}

    def _all(self) -> list[x509.CertificateRevocationList]:
        found: list[x509.CertificateRevocationList] = []
        for path in sorted(self._folder.glob("crl*.pem")):
            mtime = path.stat().st_mtime
            cached = self._cache.get(path)
            if cached is None or cached.mtime != mtime:
                data = path.read_bytes()
                cached = _Cached(mtime, [x509.load_pem_x509_crl(data)])
                self._cache[path] = cached
            found.extend(cached.crls)
        return found

    def crls_for(self, issuer: x509.Name) -> Sequence[x509.CertificateRevocationList]:
        return [crl for crl in self._all() if crl.issuer == issuer]
