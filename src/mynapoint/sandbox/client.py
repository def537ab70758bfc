"""HTTP clients, no Django: :class:`ProviderApiClient`, the sandbox provider calling the platform's provider API
with its own API key, and :class:`SandboxClient`, the ``mynapoint sandbox`` commands calling the sandbox's
JSON API under ``/sandbox/``."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

import requests

__all__ = ["ProviderApiClient", "ProviderApiError", "SandboxApiError", "SandboxClient"]

API_PATH: Final = "/api/provider/v1"


class ProviderApiError(Exception):
    """The provider API refused a call (``status`` and its ``{code, message}``) or could not be reached
    (``status`` 0, ``code`` ``unreachable``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")


class ProviderApiClient:
    """The provider API (docs/provider-api.md) as one provider sees it. ``server`` is the platform's base URL
    (``http://127.0.0.1:8000``); every call sends ``X-API-Key``."""

    def __init__(self, server: str, api_key: str, *, timeout: float = 10.0) -> None:
        self.base = server.rstrip("/") + API_PATH
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"X-API-Key": api_key, "Accept": "application/json"})

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ProviderApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ProviderApiError(0, "unreachable", f"{type(exc).__name__}: {exc}"[:250]) from None
        if 200 <= response.status_code < 300:
            return response.json() if response.content else None
        try:
            body = response.json()
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "error", response.text[:200]
        raise ProviderApiError(response.status_code, code, message)

    def put_accounts(self, accounts: list[dict[str, Any]]) -> dict[str, int]:
        """``PUT /accounts``: ``[{service_id, security_codes, holder_kana, holder_born}]``."""
        result: dict[str, int] = self._call("PUT", "/accounts", json={"accounts": accounts})
        return result

    def post_transaction(self, item: dict[str, Any]) -> dict[str, str]:
        """``POST /transactions``: one ``{txid, service_id, kind, amount, at}`` (idempotent by txid)."""
        result: dict[str, str] = self._call("POST", "/transactions", json=item)
        return result

    def grants(self, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """``GET /grants``: a page of grant instructions after a cursor."""
        result: dict[str, Any] = self._call("GET", "/grants", params={"after": after, "limit": limit})
        return result

    def ack_grants(self, items: list[dict[str, Any]]) -> dict[str, int]:
        """``POST /grants/ack``: ``[{grant_id, reference}]``."""
        result: dict[str, int] = self._call("POST", "/grants/ack", json={"items": items})
        return result


class SandboxApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(message if status else f"{code}: {message}")


class SandboxClient:
    """The sandbox's JSON API (``/sandbox/``) on a running demo server."""

    def __init__(self, server: str, *, timeout: float = 30.0) -> None:
        self.base = server.rstrip("/") + "/sandbox"
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = requests.request(method, self.base + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise SandboxApiError(0, "unreachable", f"{type(exc).__name__}: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            raise SandboxApiError(response.status_code, "error", response.text[:200]) from None
        if not 200 <= response.status_code < 300:
            raise SandboxApiError(response.status_code, str(answer.get("code")), str(answer.get("message")))
        result: dict[str, Any] = answer
        return result

    def shops(self) -> dict[str, Any]:
        return self._call("GET", "/shops")

    def wallet(self, service_id: str) -> dict[str, Any]:
        return self._call("GET", f"/wallets/{quote(service_id, safe='')}")

    def open_wallet(
        self, *, service_id: str, security_code: str, holder_kana: str, holder_born: str | None
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/wallets",
            {
                "service_id": service_id,
                "security_code": security_code,
                "holder_kana": holder_kana,
                "holder_born": holder_born,
            },
        )

    def charge(self, service_id: str, *, amount: int) -> dict[str, Any]:
        return self._call("POST", f"/wallets/{quote(service_id, safe='')}/charge", {"amount": amount})

    def sync(self) -> dict[str, Any]:
        """Catch up with the platform: ``{declared, pulled, acknowledged, errors}``."""
        return self._call("POST", "/sync")

    def pay(self, service_id: str, *, shop: str, amount: int, use_points: int) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/wallets/{quote(service_id, safe='')}/pay",
            {"shop": shop, "amount": amount, "use_points": use_points},
        )
