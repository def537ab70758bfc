"""Rejection codes and statuses, with the words residents and auditors read (Japanese first, then English)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPLICATION_REJECTIONS",
    "MEASURE_LABELS",
    "REGISTRATION_REJECTIONS",
    "STATUS_LABELS",
    "Status",
]

# In the order they are checked (program.md D5): the first failure wins.
APPLICATION_REJECTIONS: Final[dict[str, tuple[str, str]]] = {
    "person_deceased": (
        "申込日より前に亡くなられています",
        "the person had died by the day of the application",
    ),
    "card_not_issued": (
        "申込日にマイナンバーカードを受け取っていません",
        "the card was not in hand on the application day",
    ),
    "card_applied_after_deadline": (
        "カード申請期限までにマイナンバーカードの申請がありません",
        "the card was not applied for by the card application deadline",
    ),
    "application_period_not_started": (
        "この施策の申込受付はまだ始まっていません",
        "applications for this measure had not opened",
    ),
    "application_period_ended": (
        "ポイント申込期限を過ぎています",
        "the point application deadline had passed",
    ),
    "provider_application_closed": (
        "この決済サービスは申込受付を終了しています",
        "the payment service had closed its applications",
    ),
    "phase1_completed": (
        "マイナポイント第1弾で上限までポイントを受け取っています",
        "the full premium was already received in phase 1",
    ),
    "already_applied": (
        "この施策にはすでに申し込んでいます（1施策につき1人1回）",
        "already applied for this measure",
    ),
    "account_not_own": (
        "ご本人名義の決済サービスではありません",
        "the payment account is not the applicant's own",
    ),
    "representative_not_present": (
        "法定代理人（または本人）の申込・立会いが必要です",
        "the legal representative (or the person) had to apply or be present",
    ),
    "account_linked_to_another_person": (
        "この決済サービスIDは別の方に紐づけられています",
        "the payment account is already linked to another person",
    ),
}

REGISTRATION_REJECTIONS: Final[dict[str, tuple[str, str]]] = {
    "holder_name_mismatch": (
        "口座名義（カナ）がご本人の氏名と一致しません",
        "the account holder's kana name does not match the resident's",
    ),
}


class Status:
    NOT_APPLIED: Final = "未申込"
    APPLIED: Final = "申込済"
    PENDING: Final = "権利未確定"
    CONFIRMED: Final = "権利確定"
    CAP_REACHED: Final = "上限到達"
    STOPPED: Final = "停止"


STATUS_LABELS: Final[dict[str, str]] = {
    Status.NOT_APPLIED: "not applied",
    Status.APPLIED: "applied",
    Status.PENDING: "entitlement pending",
    Status.CONFIRMED: "entitlement confirmed",
    Status.CAP_REACHED: "cap reached",
    Status.STOPPED: "stopped",
}

MEASURE_LABELS: Final[dict[str, tuple[str, str]]] = {
    "premium": ("施策1（カード取得・25%還元）", "premium (25 % of charges or purchases)"),
    "health_insurance": ("施策2（健康保険証利用登録）", "health-insurance use registration"),
    "public_fund": ("施策3（公金受取口座登録）", "public-fund account registration"),
}
