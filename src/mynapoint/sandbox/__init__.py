"""デモ決済: a sandbox payment-service provider, built in for the demo and the end-to-end tests.

It keeps its own books (wallets with a yen balance and a points balance, charges, purchases at demo shops, the
grants it received) and talks to the platform only as any provider would, through the public provider API
(docs/provider-api.md) with its own API key: it declares its wallets (``PUT /accounts``), reports charges and
purchases (``POST /transactions``), receives signed grant webhooks and acknowledges them
(``POST /grants/ack``), and pulls the grants a lost webhook did not bring (``GET /grants`` from its stored
cursor, whenever it syncs with the platform: ``POST /sandbox/sync``, ``mynapoint sandbox sync``, after each
charge or purchase, at the demo's start). It never imports or queries the platform's models (the import-linter contract in
pyproject.toml). Its minimal JSON API for the demo is mounted under ``/sandbox/`` and answers 404 until the
demo has configured it (``<data folder>/sandbox/config.json``).
"""
