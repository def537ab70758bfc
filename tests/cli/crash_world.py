"""A world for the crash test, run as its own process against the data folder in MYNAPOINT_DATA_DIR.

python crash_world.py build N     # migrate, N residents linked to providers, with charges and refunds
python crash_world.py check DATE  # JSON: residents whose instructed points differ from what is due
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mynapoint.config.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db.models import Sum  # noqa: E402

from mynapoint.applications.models import ApplicationStatus, PointApplication  # noqa: E402
from mynapoint.applications.selectors import parameters, resident_history  # noqa: E402
from mynapoint.applications.services import apply_for_measure, record_health_insurance_registration  # noqa: E402
from mynapoint.applications.transactions import record_refund, record_transaction  # noqa: E402
from mynapoint.audit.services import Actor  # noqa: E402
from mynapoint.grants.models import Grant  # noqa: E402
from mynapoint.grants.services import due_cutoff  # noqa: E402
from mynapoint.identity.models import Resident  # noqa: E402
from mynapoint.providers.models import Provider  # noqa: E402
from mynapoint.rules.engine import evaluator_for  # noqa: E402
from mynapoint.rules.model import JST  # noqa: E402

NOW = dt.datetime(2022, 7, 1, 10, 0, tzinfo=JST)
WHO = Actor(actor="crash-test", channel="system", terminal="")


def build(n: int) -> None:
    from django.conf import settings

    from mynapoint.applications.adapters import FileRegistryAdapter

    call_command("migrate", verbosity=0)
    rng = random.Random(7)
    Provider.objects.create(
        key="now", name_ja="即時", kind="qr", modes=["charge"], grant_schedule="immediate"
    )
    Provider.objects.create(key="late", name_ja="30日後", kind="credit", modes=["charge"], grant_schedule="days_after",
                            grant_schedule_days=30)  # fmt: skip
    registry = FileRegistryAdapter(settings.MYNAPOINT_PROVIDER_REGISTRY)
    entries: dict[str, dict[str, object]] = {"now": {}, "late": {}}
    for i in range(n):
        kana = f"テスト {chr(0x30A2 + i % 40)}{i}"
        resident = Resident.objects.create(
            mykey_id=f"C{i:07d}", created_at=NOW, born=dt.date(1980, 1, 1), kana=kana,
            card_applied=dt.date(2021, 1, 1), card_issued=dt.date(2021, 2, 1),
        )  # fmt: skip
        provider = "now" if i % 3 else "late"
        entries[provider][f"A{i}"] = {
            "security_codes": ["1"],
            "holder_kana": kana,
            "holder_born": "1980-01-01",
        }
        registry.path.write_text(json.dumps(entries), encoding="utf-8")
        registry._mtime = -1
        for measure in ("premium", "health_insurance"):
            apply_for_measure(resident=resident, measure=measure, provider_key=provider, service_id=f"A{i}",
                              security_codes=["1"], mode="charge", operated_by=None, present=[], now=NOW, who=WHO)  # fmt: skip
        if i % 2:
            record_health_insurance_registration(mykey_id=resident.mykey_id, registered_at=NOW, external_id=f"h{i}",
                                                 source="crash", now=NOW, who=WHO)  # fmt: skip
        for t in range(rng.randint(1, 4)):
            at = NOW + dt.timedelta(days=rng.randint(0, 40))
            record_transaction(provider_key=provider, txid=f"t{i}-{t}", service_id=f"A{i}", kind="charge",
                               amount=rng.choice([3000, 7000, 12000]), at=at, now=at, who=WHO)  # fmt: skip
            if rng.random() < 0.2:
                record_refund(provider_key=provider, refund_id=f"r{i}-{t}", txid=f"t{i}-{t}", amount=2000, at=at,
                              now=at, who=WHO)  # fmt: skip


def check(today: dt.date) -> dict[str, list[str]]:
    params = parameters()
    wrong: list[str] = []
    for app in PointApplication.objects.select_related("resident", "account__provider").filter(
        status=ApplicationStatus.ACCEPTED
    ):
        cutoff = due_cutoff(app.account.provider, today)
        earned = (
            evaluator_for(resident_history(app.resident), params, as_of_day=cutoff.toordinal())
            .result()
            .earned
        )
        instructed = (
            Grant.objects.filter(resident=app.resident, measure=app.measure).aggregate(t=Sum("amount"))["t"]
            or 0
        )
        if instructed != earned[app.measure]:
            wrong.append(
                f"{app.resident.mykey_id} {app.measure}: instructed {instructed}, due {earned[app.measure]}"
            )
    return {"wrong": wrong, "grants": [str(Grant.objects.count())]}


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(int(sys.argv[2]))
    else:
        print(json.dumps(check(dt.date.fromisoformat(sys.argv[2]))))
