"""The 認証アプリ route: OpenID Connect (authorization code + PKCE S256) in front of a JPKI card login.

* :mod:`.client` — the relying party (our side): authorization URL, code exchange, ID-token validation;
* :mod:`.provider` — a small OpenID Provider that signs residents in with their card, a stand-in for the
  Digital Agency's 認証アプリ (outside our system) in tests and the demo.

The two agree on one private claim, :data:`CERTIFICATE_CLAIM`: the user-authentication certificate the
provider verified (base64 DER), so that the platform can tie a first-seen ``sub`` to the card's MyKey ID.
No My Number is ever part of a token.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CERTIFICATE_CLAIM"]

CERTIFICATE_CLAIM: Final = "jpki_certificate"
