"""How many JPKI logins per second one process can verify (nonce + validity + chain + signature + CRL).

Signing happens on the resident's card, so it is done up front and not timed.  Run::

    python -m mynapoint.identity.jpki.bench 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import cryptography
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .ca import issue_user_certificate, make_crl, make_test_ca
from .verify import InMemoryNonceStore, JpkiVerifier

__all__ = ["bench_logins", "main"]


def bench_logins(n: int, *, users: int = 10, crl_entries: int = 1000) -> dict[str, Any]:
    """Verify ``n`` logins (each with a fresh nonce) and report throughput."""
    if n < 1:
        raise ValueError("n must be at least 1")
    now = datetime.now(UTC)
    ca = make_test_ca(now=now)
    holders = [issue_user_certificate(ca=ca, now=now) for _ in range(max(1, users))]
    revoked = [int.from_bytes(os.urandom(16), "big") for _ in range(crl_entries)]
    crl = make_crl(ca=ca, now=now, revoked=revoked)
    nonces = InMemoryNonceStore()
    verifier = JpkiVerifier([ca.certificate], [crl], nonce_store=nonces)

    logins: list[tuple[bytes, bytes, bytes]] = []
    for i in range(n):
        holder = holders[i % len(holders)]
        nonce = nonces.issue(now=now)
        signature = holder.private_key.sign(nonce, padding.PKCS1v15(), hashes.SHA256())
        logins.append((holder.certificate_der, signature, nonce))

    durations: list[float] = []
    started = time.perf_counter()
    for certificate_der, signature, nonce in logins:
        t0 = time.perf_counter()
        verifier.verify_login(certificate_der=certificate_der, signature=signature, nonce=nonce, now=now)
        durations.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    durations.sort()
    return {
        "n": n,
        "seconds": round(elapsed, 4),
        "verifications_per_second": round(n / elapsed, 1),
        "mean_ms": round(statistics.fmean(durations) * 1000, 4),
        "p50_ms": round(durations[len(durations) // 2] * 1000, 4),
        "p99_ms": round(durations[min(len(durations) - 1, (len(durations) * 99) // 100)] * 1000, 4),
        "crl_entries": crl_entries,
        "users": len(holders),
        "checks": "nonce, validity, chain, signature, CRL",
        "cryptography": cryptography.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="JPKI login-verification throughput")
    parser.add_argument("n", type=int, nargs="?", default=2000)
    parser.add_argument("--crl-entries", type=int, default=1000)
    args = parser.parse_args(argv)
    print(json.dumps(bench_logins(args.n, crl_entries=args.crl_entries), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
