"""JPKI user-authentication (公的個人認証サービス 利用者証明用電子証明書) without any web framework.

* :mod:`.ca` — a test CA: root certificate, user-authentication certificates, CRLs, OCSP responses;
* :mod:`.card` — a software card speaking the user-authentication AP's APDUs;
* :mod:`.client` — a card-agnostic client (read the certificate, sign a nonce with the PIN);
* :mod:`.pcsc` — a PC/SC transport (pyscard, optional);
* :mod:`.vpcd` — serves a software card to pcscd through vsmartcard's vpcd driver;
* :mod:`.verify` — the server side: nonces and certificate/signature/revocation checks;
* :mod:`.bench` — login-verification throughput.

Nothing here reads, asks for or stores a My Number, and only the user-authentication AP is ever selected.
"""
