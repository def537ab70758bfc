"""Two edits of one provider at once. ``update_provider`` checks the settings it changes against the ones it
keeps (credit cards have no charge mode, say), so it must read them under the provider row's lock: on
PostgreSQL ``SELECT … FOR NO KEY UPDATE``; SQLite's IMMEDIATE transaction takes the database's write lock
before anything is read, so there is no race to show there.

The other edit is played by a second connection that holds the row lock, as an edit in progress does, until
the test has seen ``update_provider`` wait for it. Without the lock ``update_provider`` checks against the
committed row (a QR wallet), waits only at its UPDATE, and writes a credit card with a charge mode: with the
``select_for_update`` taken out of ``providers.services._locked`` this test fails so (tried by hand). There is
no control test that turns the lock off, as the applications' tests do through a setting: this lock has no
switch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from concurrency_hooks import backend_pid, blocked_by
from django.db import connection, transaction
from support import NOW

from mynapoint.providers.models import Provider
from mynapoint.providers.services import ProviderError, onboard_provider, update_provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("flushable")]
WAIT = 30.0


@pytest.mark.postgres(
    "SQLite serialises writers at BEGIN IMMEDIATE, before anything is read: no race to show"
)
def test_an_edit_is_checked_against_what_a_concurrent_edit_left() -> None:
    onboard_provider(key="paypay", name_ja="ペイペイ", kind="qr", modes=["charge"], now=NOW)
    pids: dict[str, int] = {}
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def other_edit() -> None:  # in progress: the row locked, the provider made a credit card
        try:
            pids["other"] = backend_pid()
            with transaction.atomic():
                Provider.objects.select_for_update(no_key=True).get(key="paypay")
                Provider.objects.filter(key="paypay").update(kind="credit", modes=["purchase"])
                holding.set()
                release.wait(WAIT)
        finally:
            connection.close()

    def this_edit() -> None:
        try:
            pids["this"] = backend_pid()
            outcome["result"] = update_provider(provider_key="paypay", modes=["charge", "purchase"], now=NOW)
        except ProviderError as error:
            outcome["error"] = error
        finally:
            connection.close()

    other = threading.Thread(target=other_edit)
    other.start()
    assert holding.wait(WAIT)
    this = threading.Thread(target=this_edit)
    this.start()
    give_up = time.monotonic() + WAIT
    waited = False
    while not waited and time.monotonic() < give_up and this.is_alive():
        waited = "this" in pids and blocked_by(pids["this"], pids["other"])
        time.sleep(0.01)
    release.set()
    other.join(WAIT)
    this.join(WAIT)
    assert waited, "update_provider did not wait for the row lock of the edit in progress"
    assert "result" not in outcome
    error = outcome["error"]
    assert (error.code, error.field) == ("bad_modes", "modes")
    assert "purchases only" in error.en
    provider = Provider.objects.get(key="paypay")
    assert (provider.kind, provider.modes) == ("credit", ["purchase"])
