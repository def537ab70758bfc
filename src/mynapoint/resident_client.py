"""A resident's client for the HTTP API: log in with a card (software card or a PC/SC reader), apply, look.

The PIN goes to the card only; the server receives the certificate and the signature over its nonce.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from typing import Any

from mynapoint.identity.jpki.client import JpkiClient, Transport

__all__ = ["ApiError", "ResidentClient"]


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body
        message = body.get("message") or body.get("detail") or body
        super().__init__(f"HTTP {status}: {body.get('code', '')} {message}")


class ResidentClient:
    def __init__(
        self, base_url: str, *, terminal: str = "", channel: str = "self", timeout: float = 30
    ) -> None:
        if not base_url.startswith(("http://127.", "http://localhost", "https://", "http://[::1]")):
            raise ValueError("use https, or plain http only on this machine (127.0.0.1 / localhost)")
        self.base = base_url.rstrip("/") + "/api/resident/v1"
        self.headers = {"Content-Type": "application/json", "X-Channel": channel}
        if terminal:
            self.headers["X-Terminal-Id"] = terminal
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)  # noqa: S310
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"message": raw.decode(errors="replace")}
            raise ApiError(exc.code, payload if isinstance(payload, dict) else {"detail": payload}) from None

    def login(self, card: Transport, pin: str) -> dict[str, Any]:
        challenge = self._call("POST", "/login/challenge")
        nonce = base64.b64decode(challenge["nonce"])
        response = JpkiClient(card).login(nonce, pin)
        result: dict[str, Any] = self._call(
            "POST",
            "/login/jpki",
            {
                "certificate": base64.b64encode(response.certificate_der).decode(),
                "signature": base64.b64encode(response.signature).decode(),
                "nonce": challenge["nonce"],
            },
        )
        return result

    def logout(self) -> None:
        self._call("POST", "/logout")

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/me")
        return result

    def declare_profile(self, *, born: str | None = None, kana: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PUT", "/me/profile", {"born": born, "kana": kana})
        return result

    def apply(
        self,
        *,
        measure: str,
        provider: str,
        service_id: str,
        security_codes: list[str],
        mode: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "measure": measure,
            "provider": provider,
            "service_id": service_id,
            "security_codes": security_codes,
            "mode": mode,
        }
        result: dict[str, Any] = self._call("POST", "/applications", body)
        return result
