"""`mynapoint providers`: the programme office onboards, edits and lists providers and manages their API keys,
run as a user would run it, against an embedded database of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

MYNAPOINT = [sys.executable, "-m", "mynapoint.cli"]
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def mynapoint(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The command on a migrated SQLite database in a data folder of its own, on the demo's calendar."""
    env = {
        **os.environ,
        "MYNAPOINT_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "MYNAPOINT_CLOCK_START": "2023-03-15T10:00:00+09:00",
    }
    for name in ("DJANGO_SETTINGS_MODULE", "MYNAPOINT_DATABASE_URL"):
        env.pop(name, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own command
            [*MYNAPOINT, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    migrated = run("manage", "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr
    return run


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def shown(run: Run, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(run("providers", "show", key, "--json")).stdout)
    return doc


def test_onboard_list_and_show(mynapoint: Run) -> None:
    added = ok(mynapoint("providers", "add", "paypay", "--name-ja", "ペイペイ", "--name-en", "PayPay",
                         "--kind", "qr", "--mode", "charge", "--mode", "purchase",
                         "--grant-schedule", "monthly", "--grant-schedule-days", "25",
                         "--charge-deadline", "2023-09-30"))  # fmt: skip
    assert "provider onboarded: paypay" in added.stdout
    assert "secret" not in added.stdout  # pulled grants, registry accounts: nothing is signed
    pushed = ok(mynapoint("providers", "add", "aeon", "--name-ja", "イオンカード", "--kind", "credit",
                          "--mode", "purchase", "--measure", "premium", "--security-code-count", "2",
                          "--grant-delivery", "push", "--webhook-url", "https://aeon.example/hooks",
                          "--json"))  # fmt: skip
    doc = json.loads(pushed.stdout)
    secret = doc["webhook_secret"]  # generated, shown once
    assert len(secret) >= 32
    assert (doc["kind"], doc["modes"], doc["measures"], doc["webhook_secret_set"]) == (
        "credit",
        ["purchase"],
        ["premium"],
        True,
    )
    listed = json.loads(ok(mynapoint("providers", "list", "--json")).stdout)
    assert [p["key"] for p in listed] == ["aeon", "paypay"]
    paypay = shown(mynapoint, "paypay")
    assert paypay["grant_schedule"] == "monthly"
    assert paypay["grant_schedule_days"] == 25
    assert paypay["charge_deadline"] == "2023-09-30"
    assert paypay["api_keys"] == []
    assert secret not in json.dumps(listed)
    aeon = ok(mynapoint("providers", "show", "aeon"))
    assert "イオンカード" in aeon.stdout
    assert secret not in aeon.stdout
    table = ok(mynapoint("providers", "list")).stdout
    assert "ペイペイ" in table
    assert "monthly 25 / pull" in table


def test_bad_input_exits_2_naming_the_field(mynapoint: Run) -> None:
    credit = mynapoint(
        "providers", "add", "card", "--name-ja", "カード", "--kind", "credit", "--mode", "charge"
    )
    assert credit.returncode == 2
    assert "bad_modes (modes)" in credit.stderr
    assert "クレジットカード・デビットカードにチャージ方式はありません" in credit.stderr
    assert "credit and debit cards earn on purchases only" in credit.stderr
    missing = mynapoint("providers", "add", "card", "--name-ja", "カード", "--mode", "purchase")
    assert missing.returncode == 2
    assert "--kind is required" in missing.stderr
    again = mynapoint("providers", "add", "dup", "--name-ja", "重複", "--kind", "qr", "--mode", "charge")
    assert again.returncode == 0
    twice = mynapoint("providers", "add", "dup", "--name-ja", "重複", "--kind", "qr", "--mode", "charge")
    assert twice.returncode == 2
    assert "provider_exists (key)" in twice.stderr
    unknown = mynapoint("providers", "show", "nobody")
    assert unknown.returncode == 2
    assert "unknown_provider" in unknown.stderr


def test_update_changes_what_is_given_and_refuses_what_it_must(mynapoint: Run) -> None:
    ok(mynapoint("providers", "add", "edy", "--name-ja", "エディ", "--kind", "emoney", "--mode", "charge",
                 "--application-deadline", "2023-05-31"))  # fmt: skip
    changed = ok(mynapoint("providers", "update", "edy", "--name-en", "Edy", "--mode", "charge", "--mode",
                           "purchase", "--application-deadline", "none", "--pre-registration"))  # fmt: skip
    assert "changed name_en, modes, application_deadline, pre_registration_required" in changed.stdout
    doc = shown(mynapoint, "edy")
    assert (doc["name_en"], doc["modes"], doc["application_deadline"]) == (
        "Edy",
        ["charge", "purchase"],
        None,
    )
    assert doc["pre_registration_required"] is True
    same = ok(mynapoint("providers", "update", "edy", "--name-en", "Edy", "--json"))
    assert json.loads(same.stdout)["changed"] == []
    past = mynapoint("providers", "update", "edy", "--charge-deadline", "2023-03-14")
    assert past.returncode == 2
    assert "deadline_passed (charge_deadline)" in past.stderr
    assert "2023-03-15" in past.stderr  # today on the programme clock
    for args, message in (
        ((), "nothing to change"),
        (("--charge-deadline", "2023-02-30"), "is not a day"),
        (("--new-webhook-secret", "--webhook-secret", "s" * 20), "not both"),
        (("--security-code-count", "4"), "security_code_count"),
    ):
        refused = mynapoint("providers", "update", "edy", *args)
        assert refused.returncode == 2, args
        assert message in refused.stderr, refused.stderr
    assert mynapoint("providers", "update", "nobody", "--name-ja", "誰か").returncode == 2
    push = ok(mynapoint("providers", "update", "edy", "--grant-delivery", "push", "--webhook-url",
                        "https://edy.example/hooks"))  # fmt: skip
    assert "changed grant_delivery, webhook_url, webhook_secret" in push.stdout
    assert "webhook signing secret (shown once)" in push.stdout
    off = json.loads(ok(mynapoint("providers", "update", "edy", "--inactive", "--json")).stdout)
    assert off["changed"] == ["active"]
    assert off["provider"]["active"] is False
    assert ok(mynapoint("audit", "verify")).stdout.startswith("audit log OK")


def test_api_keys_issue_rotate_revoke(mynapoint: Run) -> None:
    ok(mynapoint("providers", "add", "rakuten", "--name-ja", "楽天", "--kind", "qr", "--mode", "purchase"))
    issued = ok(mynapoint("providers", "keys", "issue", "rakuten", "--label", "production"))
    [first] = issued.stdout.splitlines()  # the key alone on stdout, once; the notice on stderr
    assert first.startswith("mnp_")
    assert "shown once" in issued.stderr
    rotated = json.loads(
        ok(mynapoint("providers", "keys", "rotate", "rakuten", "--label", "2023", "--json")).stdout
    )
    assert rotated["api_key"].startswith("mnp_")
    assert rotated["api_key"] != first
    keys = shown(mynapoint, "rakuten")["api_keys"]
    assert [(k["prefix"], k["label"], k["revoked_at"]) for k in keys] == [
        (first[:12], "production", None),
        (rotated["prefix"], "2023", None),
    ]
    assert first not in json.dumps(keys)
    check = f"from mynapoint.providers.selectors import api_key_for; print(api_key_for({first!r}).prefix)"
    # the key printed is one the provider API accepts
    assert ok(mynapoint("manage", "shell", "--no-imports", "-c", check)).stdout.strip() == first[:12]
    plain_rotate = ok(mynapoint("providers", "keys", "rotate", "rakuten", "--label", "spare"))
    assert f"still valid until revoked: {first[:12]}, {rotated['prefix']}" in plain_rotate.stderr
    revoked = ok(mynapoint("providers", "keys", "revoke", "rakuten", first[:12]))
    assert f"{first[:12]}: 失効しました / revoked" in revoked.stdout
    again = ok(mynapoint("providers", "keys", "revoke", "rakuten", first[:12]))
    assert "already revoked at 2023-03-15T10:" in again.stdout
    assert shown(mynapoint, "rakuten")["api_keys"][0]["revoked_at"].startswith("2023-03-15T10:")
    unknown = mynapoint("providers", "keys", "revoke", "rakuten", "mnp_nothing0")
    assert unknown.returncode == 2
    assert "unknown_api_key" in unknown.stderr
    other = mynapoint("providers", "keys", "issue", "rakuten", "--label", "x" * 101)
    assert other.returncode == 2
    assert "bad_label (label)" in other.stderr
