"""A software JPKI card: the user-authentication AP spoken as APDU bytes in, response bytes out.

It behaves like the AP of a マイナンバーカード as far as login needs:

* ``00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01``: SELECT the user-authentication AP by AID;
* ``00 A4 02 0C 02 xx xx``: SELECT an EF: ``000A`` certificate, ``000B`` CA certificate, ``0017`` private key,
  ``0018`` PIN;
* ``00 20 00 80`` (PIN EF selected): VERIFY. No data asks the tries left (``63 Cx``) without using one;
  four ASCII digits check the PIN; three wrong tries block the PIN (``69 83`` from then on, even for the
  right PIN) until the municipal office resets it;
* ``00 B0 oo oo Le``: READ BINARY of the certificate EFs (short or extended Le);
* ``80 2A 00 80 Lc DigestInfo 00`` (key EF selected, PIN verified in this session): COMPUTE DIGITAL SIGNATURE,
  RSA PKCS#1 v1.5 over the DigestInfo.

Only a salted hash of the PIN is held (and persisted); no method returns the PIN or its hash.  The card's
state, including tries left, can be saved with :meth:`SoftwareCard.to_dict` / :meth:`SoftwareCard.save`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from . import apdu as iso
from .ca import TestCA, issue_user_certificate

__all__ = ["CARD_FORMAT", "SoftwareCard"]

CARD_FORMAT: Final = "mynapoint-jpki-software-card/1"
_PBKDF2_ITERATIONS: Final = 20_000
_SALT_BYTES: Final = 16
_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def _default_atr() -> bytes:
    """A T=1 ATR with historical bytes "JPKI-SOFT" and the TCK checksum."""
    historical = b"JPKI-SOFT"
    body = bytes([0x80 | len(historical), 0x01]) + historical  # T0 (TD1 follows, K bytes), TD1 = T=1
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes([tck])


DEFAULT_ATR: Final = _default_atr()


def _parse_digest_info(data: bytes) -> tuple[hashes.HashAlgorithm, bytes] | None:
    """(hash algorithm, digest) from a DER DigestInfo, or ``None`` if it is not one we know."""
    for name, prefix in iso.DIGEST_INFO_PREFIXES.items():
        algorithm = _HASHES[name]
        if data.startswith(prefix) and len(data) == len(prefix) + algorithm.digest_size:
            return algorithm, data[len(prefix) :]
    return None


def _check_pin_format(pin: str) -> None:
    if len(pin) != iso.PIN_LENGTH or not pin.isascii() or not pin.isdigit():
        raise ValueError("the user-authentication PIN is exactly 4 ASCII digits")


def _hash_pin(pin: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", pin, salt, iterations)


class SoftwareCard:
    """The JPKI user-authentication AP in software.  Thread-safe; one logical session at a time."""

    def __init__(
        self,
        *,
        certificate_der: bytes,
        ca_certificate_der: bytes,
        private_key: rsa.RSAPrivateKey,
        pin: str,
        atr: bytes = DEFAULT_ATR,
    ) -> None:
        _check_pin_format(pin)
        certificate = x509.load_der_x509_certificate(certificate_der)
        public_key = certificate.public_key()
        if (
            not isinstance(public_key, rsa.RSAPublicKey)
            or public_key.public_numbers() != private_key.public_key().public_numbers()
        ):
            raise ValueError("the private key does not match the certificate")
        salt = secrets.token_bytes(_SALT_BYTES)
        self._init_state(
            certificate_der=certificate_der,
            ca_certificate_der=ca_certificate_der,
            private_key=private_key,
            pin_salt=salt,
            pin_hash=_hash_pin(pin.encode("ascii"), salt, _PBKDF2_ITERATIONS),
            pin_iterations=_PBKDF2_ITERATIONS,
            tries_left=iso.MAX_PIN_TRIES,
            atr=atr,
        )

    def _init_state(
        self,
        *,
        certificate_der: bytes,
        ca_certificate_der: bytes,
        private_key: rsa.RSAPrivateKey,
        pin_salt: bytes,
        pin_hash: bytes,
        pin_iterations: int,
        tries_left: int,
        atr: bytes,
    ) -> None:
        if not 0 <= tries_left <= iso.MAX_PIN_TRIES:
            raise ValueError("tries_left out of range")
        self._certificate_der = certificate_der
        self._ca_certificate_der = ca_certificate_der
        self._private_key = private_key
        self._pin_salt = pin_salt
        self._pin_hash = pin_hash
        self._pin_iterations = pin_iterations
        self._tries_left = tries_left
        self.atr = atr
        self._lock = threading.Lock()
        self._ap_selected = False
        self._current_ef: bytes | None = None
        self._verified = False

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def issue(cls, *, ca: TestCA, pin: str, now: datetime) -> SoftwareCard:
        """A new card with a fresh user-authentication certificate from the test CA ``ca``."""
        _check_pin_format(pin)
        issued = issue_user_certificate(ca=ca, now=now)
        return cls(
            certificate_der=issued.certificate_der,
            ca_certificate_der=ca.certificate.public_bytes(serialization.Encoding.DER),
            private_key=issued.private_key,
            pin=pin,
        )

    def to_dict(self) -> dict[str, Any]:
        """The card's persistent state (certificate, key, salted PIN hash, tries left). No session state."""
        with self._lock:
            return {
                "format": CARD_FORMAT,
                "certificate": base64.b64encode(self._certificate_der).decode("ascii"),
                "ca_certificate": base64.b64encode(self._ca_certificate_der).decode("ascii"),
                "private_key": self._private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode("ascii"),
                "pin_salt": base64.b64encode(self._pin_salt).decode("ascii"),
                "pin_hash": base64.b64encode(self._pin_hash).decode("ascii"),
                "pin_iterations": self._pin_iterations,
                "tries_left": self._tries_left,
                "atr": self.atr.hex(),
            }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SoftwareCard:
        if state.get("format") != CARD_FORMAT:
            raise ValueError(f"not a {CARD_FORMAT} card state")
        key = serialization.load_pem_private_key(str(state["private_key"]).encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the card key is not an RSA key")
        card = cls.__new__(cls)
        card._init_state(
            certificate_der=base64.b64decode(state["certificate"]),
            ca_certificate_der=base64.b64decode(state["ca_certificate"]),
            private_key=key,
            pin_salt=base64.b64decode(state["pin_salt"]),
            pin_hash=base64.b64decode(state["pin_hash"]),
            pin_iterations=int(state["pin_iterations"]),
            tries_left=int(state["tries_left"]),
            atr=bytes.fromhex(str(state.get("atr", DEFAULT_ATR.hex()))),
        )
        return card

    def save(self, path: Path) -> None:
        """Write the state as JSON, mode 0600 (it holds the card's private key)."""
        data = json.dumps(self.to_dict(), indent=2).encode("utf-8")
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SoftwareCard:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a card state")
        return cls.from_dict(state)

    # ---------------------------------------------------------------------------------------------- queries
    @property
    def certificate_der(self) -> bytes:
        return self._certificate_der

    @property
    def tries_left(self) -> int:
        return self._tries_left

    @property
    def blocked(self) -> bool:
        return self._tries_left == 0

    def __repr__(self) -> str:
        return f"SoftwareCard(tries_left={self._tries_left}, blocked={self.blocked})"

    # ------------------------------------------------------------------------------------------ power/reset
    def reset(self) -> bytes:
        """Warm/cold reset: the session (selection, verified PIN) is lost. Returns the ATR."""
        with self._lock:
            self._clear_session()
        return self.atr

    def power_off(self) -> None:
        with self._lock:
            self._clear_session()

    def _clear_session(self) -> None:
        self._ap_selected = False
        self._current_ef = None
        self._verified = False

    # -------------------------------------------------------------------------------------------- transmit
    def transmit(self, apdu: bytes) -> bytes:
        """Process one command APDU; return response data followed by SW1 SW2."""
        try:
            command = iso.parse_apdu(bytes(apdu))
        except iso.ApduFormatError:
            return iso.SW_WRONG_LENGTH
        with self._lock:
            return self._dispatch(command)

    def _dispatch(self, c: iso.Apdu) -> bytes:
        if c.ins == iso.INS_SELECT:
            return self._select(c) if c.cla == iso.CLA_ISO else iso.SW_CLA_NOT_SUPPORTED
        if c.ins == iso.INS_VERIFY:
            return self._verify(c) if c.cla == iso.CLA_ISO else iso.SW_CLA_NOT_SUPPORTED
        if c.ins == iso.INS_READ_BINARY:
            return self._read_binary(c) if c.cla == iso.CLA_ISO else iso.SW_CLA_NOT_SUPPORTED
        if c.ins == iso.INS_COMPUTE_SIGNATURE:
            return self._sign(c) if c.cla == iso.CLA_PROPRIETARY else iso.SW_CLA_NOT_SUPPORTED
        return iso.SW_INS_NOT_SUPPORTED

    def _select(self, c: iso.Apdu) -> bytes:
        if c.p2 != 0x0C:  # only "no response data" is supported
            return iso.SW_WRONG_P1P2
        if c.p1 == 0x04:  # by DF name (AID)
            if c.data != iso.JPKI_AUTH_AID:
                return iso.SW_FILE_NOT_FOUND
            self._ap_selected = True
            self._current_ef = None
            self._verified = False
            return iso.SW_OK
        if c.p1 == 0x02:  # EF under the current DF
            if len(c.data) != 2:
                return iso.SW_WRONG_LENGTH
            if not self._ap_selected or c.data not in {
                iso.EF_CERTIFICATE,
                iso.EF_CA_CERTIFICATE,
                iso.EF_PRIVATE_KEY,
                iso.EF_PIN,
            }:
                return iso.SW_FILE_NOT_FOUND
            self._current_ef = c.data
            return iso.SW_OK
        return iso.SW_WRONG_P1P2

    def _verify(self, c: iso.Apdu) -> bytes:
        if c.p1 != 0x00 or c.p2 != 0x80:
            return iso.SW_WRONG_P1P2
        if not self._ap_selected or self._current_ef != iso.EF_PIN:
            return iso.SW_NO_CURRENT_EF
        if c.le is not None:
            return iso.SW_WRONG_LENGTH
        if not c.data:  # tries-left query: uses no try
            return bytes([0x63, 0xC0 | self._tries_left])
        if self._tries_left == 0:
            return iso.SW_AUTH_BLOCKED
        if len(c.data) != iso.PIN_LENGTH:
            return iso.SW_WRONG_LENGTH
        candidate = _hash_pin(c.data, self._pin_salt, self._pin_iterations)
        if hmac.compare_digest(candidate, self._pin_hash):
            self._tries_left = iso.MAX_PIN_TRIES
            self._verified = True
            return iso.SW_OK
        self._tries_left -= 1
        self._verified = False
        return bytes([0x63, 0xC0 | self._tries_left])

    def _read_binary(self, c: iso.Apdu) -> bytes:
        if c.p1 & 0x80:  # short EF identifier addressing is not supported
            return iso.SW_WRONG_P1P2
        if not self._ap_selected or self._current_ef is None:
            return iso.SW_NO_CURRENT_EF
        if self._current_ef == iso.EF_CERTIFICATE:
            content = self._certificate_der
        elif self._current_ef == iso.EF_CA_CERTIFICATE:
            content = self._ca_certificate_der
        else:  # the key and the PIN are never readable
            return iso.SW_SECURITY_NOT_SATISFIED
        if c.data or c.le is None:
            return iso.SW_WRONG_LENGTH
        offset = (c.p1 << 8) | c.p2
        if offset >= len(content):
            return iso.SW_OFFSET_OUT_OF_FILE
        maximum = 65536 if c.extended else 256
        chunk = content[offset : offset + c.le]
        if len(chunk) < c.le and c.le != maximum:
            return chunk + iso.SW_END_OF_FILE
        return chunk + iso.SW_OK

    def _sign(self, c: iso.Apdu) -> bytes:
        if c.p1 != 0x00 or c.p2 != 0x80:
            return iso.SW_WRONG_P1P2
        if not self._ap_selected or self._current_ef != iso.EF_PRIVATE_KEY:
            return iso.SW_NO_CURRENT_EF
        if not self._verified:
            return iso.SW_SECURITY_NOT_SATISFIED
        parsed = _parse_digest_info(c.data)
        if parsed is None:
            return iso.SW_WRONG_DATA
        algorithm, digest = parsed
        signature = self._private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
        if c.le is not None and c.le < len(signature):
            return bytes([0x6C, len(signature) % 256])  # wrong Le: here is the exact length
        return signature + iso.SW_OK
