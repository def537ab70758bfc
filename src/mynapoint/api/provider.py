"""The provider API (``/api/provider/v1/``) for payment-service providers: the contract is docs/provider-api.md.

Header ``X-API-Key`` (stored hashed; a revoked or unknown key is a 401). Every answer that is not a success
has one shape, ``{code, message}``, the message in Japanese, then `` / `` and English, naming the field (and
in batches the item index), an unknown path under the prefix (404) and a wrong method (405) included.
Operations parse input, call one service or selector, and answer. The schema is exported by
:func:`export_schema` and committed as docs/openapi/provider-v1.json; a test fails on drift.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Annotated, Any, Final, Literal

import polars as pl
import pydantic
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.http.response import HttpResponseBase
from django.urls import URLPattern, URLResolver, re_path
from django.views.decorators.csrf import csrf_exempt
from ninja import File, NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.files import UploadedFile
from ninja.security import APIKeyHeader
from pydantic import AwareDatetime, Field, SkipValidation, field_validator

from mynapoint import clock
from mynapoint.applications.selectors import link_notices
from mynapoint.applications.stops import StopError, record_stop
from mynapoint.applications.transactions import (
    CHARGE_SCHEMA,
    MAX_AMOUNT,
    MAX_BATCH,
    BatchItem,
    BatchRefused,
    BatchResult,
    BatchTooLarge,
    ReportedRefund,
    ReportedTransaction,
    TransactionConflict,
    TransactionError,
    record_batch,
    record_charges,
    record_refund,
    record_transaction,
)
from mynapoint.audit.services import Actor
from mynapoint.grants.selectors import grant_instructions
from mynapoint.grants.services import NotYourGrant, UnknownGrant, acknowledge_grants
from mynapoint.identity.mynumber import MyNumberRefused, refuse_my_number
from mynapoint.providers.models import Provider, ProviderApiKey
from mynapoint.providers.selectors import api_key_for
from mynapoint.providers.services import (
    MAX_DECLARED_ACCOUNTS,
    AccountDeclaration,
    ProviderError,
    declare_accounts,
    note_api_key_used,
    withdraw_account,
)

__all__ = ["api", "export_schema"]

logger = logging.getLogger(__name__)

PATH_PREFIX: Final = "/api/provider/v1"
MAX_CSV_BYTES: Final = 16 * 1024 * 1024
CSV_HEADER: Final = ("kind", "txid", "service_id", "amount", "at", "refund_id", "of_txid")


class _ProviderApi(NinjaAPI):
    """A NinjaAPI whose URL patterns answer in the one error shape where ninja and Django would answer on
    their own: a path under the prefix that is no operation (404, Django's page otherwise), a method the
    path's operations do not take (405, ninja's plain text otherwise)."""

    @property
    def urls(self) -> tuple[list[URLResolver | URLPattern], str, str]:
        patterns, app_name, namespace = super().urls
        shaped = [_in_error_shape(pattern) for pattern in patterns]
        return [*shaped, re_path(r"^", _unknown_path, name="unknown")], app_name, namespace


api = _ProviderApi(
    title="mynapoint provider API",
    version="1",
    urls_namespace="provider_api",
    description=(
        "マイナポイント 決済事業者向けAPI: 口座の登録、紐づけ通知、取引・返金の報告、付与指示と付与完了、停止の通知。"
        " / For payment-service providers: declared accounts, link notices, transactions and refunds, grant"
        " instructions and acknowledgements, stop notices. Errors are always {code, message}."
    ),
)


# ------------------------------------------------------------------------------------------------ errors


class Error(Schema):
    code: str = Field(description="機械可読なエラーコード / a machine-readable code")
    message: str = Field(description="日本語 / English; names the field and, in batches, the item index")


class ApiError(Exception):
    """An answer other than success, raised by an operation."""

    def __init__(self, status: int, code: str, ja: str, en: str) -> None:
        self.status, self.code, self.ja, self.en = status, code, ja, en
        super().__init__(f"{status} {code}: {en}")


def _error(request: HttpRequest, status: int, code: str, ja: str, en: str, field: str = "") -> HttpResponse:
    where = f" ({field})" if field and field not in en else ""
    return api.create_response(request, {"code": code, "message": f"{ja} / {en}{where}"}, status=status)


def _where(loc: Iterable[Any]) -> str:
    """A pydantic location as the provider wrote it: ``items[3].amount`` (not ``body.body.items.3.charge``)."""
    parts: list[str] = []
    skip = {"body", "query", "path", "header", "file", "form", "charge", "purchase", "refund"}
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif str(part) not in skip:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "body"


def _pydantic_problems(errors: Iterable[Any], *, prefix: str = "") -> str:
    problems = [f"{prefix}{_where(e.get('loc', ()))}: {e.get('msg', '')}" for e in errors]
    shown = problems[:20]
    return "; ".join(shown) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    where = _pydantic_problems(exc.errors)
    return _error(
        request, 422, "invalid_input", f"入力内容に誤りがあります（{where}）", f"invalid input: {where}"
    )


@api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(
        request,
        401,
        "unauthorized",
        "APIキーがないか、無効です（X-API-Key）",
        "missing, unknown or revoked API key (X-API-Key)",
    )


_HTTP_CODES: Final = {400: "malformed", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    if exc.status_code == 400:
        return _error(
            request, 400, code, "リクエストの形式が正しくありません", f"malformed request: {exc.message}"
        )
    return _error(request, exc.status_code, code, "リクエストを処理できません", exc.message)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    where = f"{request.method} {request.path}"
    return _error(request, 404, "not_found", f"見つかりません（{where}）", f"not found: {where}")


_OPERATIONS_ARE: Final = f"docs/provider-api.md, {PATH_PREFIX}/openapi.json"


@csrf_exempt  # no cookies: a POST to an unknown path is a 404 like any other, not a CSRF failure
def _unknown_path(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    inside = request.path.rstrip("/") != PATH_PREFIX
    slash = " (paths end without a slash)" if inside and request.path.endswith("/") else ""
    return _error(
        request,
        404,
        "unknown_path",
        f"{request.path} という操作はありません（一覧: {_OPERATIONS_ARE}）",
        f"no operation at {request.method} {request.path}{slash}; the operations are in {_OPERATIONS_ARE}",
    )


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    answer = _error(
        request,
        405,
        "method_not_allowed",
        f"{request.path} に {request.method} は使えません（使えるのは {allowed}）",
        f"{request.method} is not allowed on {request.path}; use {allowed}",
    )
    answer["Allow"] = allowed
    return answer


def _in_error_shape(pattern: URLPattern | URLResolver) -> URLPattern | URLResolver:
    """The same URL pattern, its view answering a wrong method (ninja's 405) and the API root (ninja raises
    Http404 there, outside any operation) in the error shape."""
    if not isinstance(pattern, URLPattern):
        return pattern
    view = pattern.callback

    @wraps(view)
    def shaped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            answer: HttpResponseBase = view(request, *args, **kwargs)
        except Http404:
            return _unknown_path(request)
        if isinstance(answer, HttpResponseNotAllowed):
            return _method_not_allowed(request, answer["Allow"])
        return answer

    shaped.csrf_exempt = True  # type: ignore[attr-defined]  # as ninja's own views
    return URLPattern(pattern.pattern, shaped, pattern.default_args, pattern.name)


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error(
        request,
        413,
        "too_large",
        "リクエストが大きすぎます",
        "the request body is too large: send smaller batches",
    )


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return _error(request, exc.status, exc.code, exc.ja, exc.en)


@api.exception_handler(TransactionError)
def _transaction_error(request: HttpRequest, exc: TransactionError) -> HttpResponse:
    status = 409 if isinstance(exc, TransactionConflict) else 422
    if isinstance(exc, BatchRefused):
        status = 409 if exc.conflict else 422
    elif isinstance(exc, BatchTooLarge):
        status = 413
    return _error(request, status, exc.code, exc.ja, exc.en, exc.field)


@api.exception_handler(ProviderError)
def _provider_error(request: HttpRequest, exc: ProviderError) -> HttpResponse:
    return _error(request, exc.status, exc.code, exc.ja, exc.en, exc.field)


@api.exception_handler(StopError)
def _stop_error(request: HttpRequest, exc: StopError) -> HttpResponse:
    return _error(request, exc.status, exc.code, exc.ja, exc.en, exc.field)


@api.exception_handler(MyNumberRefused)
def _my_number(request: HttpRequest, exc: MyNumberRefused) -> HttpResponse:
    ja, en = str(exc).split(" / ", 1)
    return _error(request, 422, "my_number_refused", ja, en)


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("provider API: unexpected error", exc_info=exc)
    return _error(request, 500, "internal_error", "内部エラーが発生しました", "internal error")


def _errors(*statuses: int) -> dict[int, type[Error]]:
    """The error answers of an operation, for the OpenAPI schema (401 and 500 are always possible)."""
    return dict.fromkeys(sorted({401, 500, *statuses}), Error)


# ------------------------------------------------------------------------------------------------ auth


class ProviderKey(APIKeyHeader):
    param_name = "X-API-Key"

    def authenticate(self, request: HttpRequest, key: str | None) -> ProviderApiKey | None:
        row = api_key_for(key)
        if row is not None:
            note_api_key_used(key=row, now=clock.now())
        return row


api_key = ProviderKey()


def _key(request: HttpRequest) -> ProviderApiKey:
    row = getattr(request, "auth", None)
    assert isinstance(row, ProviderApiKey)  # noqa: S101 - every operation requires api_key
    return row


def _provider(request: HttpRequest) -> Provider:
    return _key(request).provider


def _who(request: HttpRequest) -> Actor:
    row = _key(request)
    return Actor(actor=f"provider:{row.provider.key}", channel="system", terminal=f"api-key:{row.prefix}")


class TooLarge(Exception):  # noqa: N818 - raised from a validator so that it is a 413, not a 422
    def __init__(self, what: str, count: int, limit: int) -> None:
        self.what, self.count, self.limit = what, count, limit
        super().__init__(f"{what}: {count} > {limit}")


@api.exception_handler(TooLarge)
def _too_large(request: HttpRequest, exc: TooLarge) -> HttpResponse:
    return _error(
        request,
        413,
        "too_many",
        f"{exc.what} は一度に{exc.limit:,}件までです（{exc.count:,}件）",
        f"at most {exc.limit} {exc.what} at once (got {exc.count})",
        exc.what,
    )


def _at_most(limit: int, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise TooLarge(what, len(value), limit)
        return value

    return check


# ------------------------------------------------------------------------------------------------ accounts


class AccountIn(Schema):
    service_id: str = Field(description="決済サービスID")
    security_codes: list[str] = Field(description="セキュリティコード（事業者の定める個数）")
    holder_kana: str = Field(description="名義人の氏名（カナ）")
    holder_born: dt.date | None = Field(default=None, description="名義人の生年月日")


class AccountsIn(Schema):
    accounts: list[AccountIn] = Field(description=f"at most {MAX_DECLARED_ACCOUNTS:,}; more is a 413")

    _limit = field_validator("accounts", mode="before")(_at_most(MAX_DECLARED_ACCOUNTS, "accounts"))


class AccountsOut(Schema):
    created: int
    updated: int


@api.put(
    "/accounts",
    auth=api_key,
    response={200: AccountsOut, **_errors(400, 413, 422)},
    summary="有効な口座の登録（verification = registry）",
    description="The accounts the provider declares valid; new ones are created, known ones replaced. "
    "All are checked first: a refused declaration keeps nothing.",
)
def put_accounts(request: HttpRequest, body: AccountsIn) -> Any:
    result = declare_accounts(
        provider=_provider(request),
        accounts=[
            AccountDeclaration(a.service_id, a.security_codes, a.holder_kana, a.holder_born)
            for a in body.accounts
        ],
        now=clock.now(),
        who=_who(request),
    )
    return {"created": result.created, "updated": result.updated}


@api.delete(
    "/accounts/{service_id}",
    auth=api_key,
    response={204: None, **_errors(404)},
    summary="口座の登録の取り消し",
)
def delete_account(request: HttpRequest, service_id: str) -> Any:
    withdraw_account(provider=_provider(request), service_id=service_id, now=clock.now(), who=_who(request))
    return Status(204, None)


# ------------------------------------------------------------------------------------------------ links


# the cursor paging of link notices and grants
After = Annotated[int, Query(ge=0, description="カーソル（前回の next_cursor）")]
Limit = Annotated[int, Query(ge=1, le=1000)]


class LinkItem(Schema):
    cursor: int = Field(description="この通知の位置（カーソル） / this notice's position")
    link_id: int = Field(
        description="紐づけの番号: 同じ紐づけの通知はすべて同じ / the link, the same in all its notices"
    )
    event: Literal["linked", "voided", "stopped", "moved", "merged"] = Field(
        description="linked: 紐づけ / voided: 重複したマイキーIDの統合で無効 / stopped: 紐づけ停止（死亡） / "
        "moved: カード再発行で service_id へ移行 / merged: 重複したマイキーIDの統合で link_ref が変更"
    )
    link_ref: str = Field(description="この事業者だけに通じる利用者の仮名（マイキーIDではない）")
    measure: str
    mode: str
    service_id: str = Field(description="この通知の後、紐づけのある決済サービスID")
    previous_service_id: str | None = Field(description="moved: 再発行前の決済サービスID（ほかは null）")
    linked_at: dt.datetime = Field(description="紐づけ（申込）の日時")
    changed_at: dt.datetime = Field(description="この変更をプラットフォームが記録した日時")
    status: Literal["linked", "voided", "stopped"] = Field(description="この通知の後の紐づけの状態")


class LinksPage(Schema):
    next_cursor: int = Field(description="次に after に渡す値（項目がなければ渡した after のまま）")
    items: list[LinkItem]


@api.get(
    "/links",
    auth=api_key,
    response={200: LinksPage, **_errors(422)},
    summary="紐づけ通知（カーソル）",
    description="Every change of a link, in order: made (`linked`), voided when a duplicate MyKey ID is merged "
    "(`voided`), moved to the original resident's `link_ref` by such a merge (`merged`), stopped on a death "
    "(`stopped`), carried to a replacement card (`moved`). Each notice has its own position and the link's "
    "state after it; a change of a link already pulled comes again after the cursor. The same `after` gives "
    "the same page.",
)
def get_links(
    request: HttpRequest,
    after: After = 0,
    limit: Limit = 100,
) -> Any:
    return link_notices(provider=_provider(request), after=after, limit=limit)


# ------------------------------------------------------------------------------------------------ transactions


# Transactions come in batches of 10,000: their schemas are plain pydantic models (ninja's Schema runs a Python
# validator per object, which costs more than the rest of the request)


class TransactionIn(pydantic.BaseModel):
    kind: Literal["charge", "purchase"]
    txid: str = Field(description="事業者の取引ID（冪等キー）: 英数字と . _ : - で1〜100文字")
    service_id: str = Field(description="決済サービスID")
    amount: int = Field(gt=0, le=MAX_AMOUNT, description="円")
    at: AwareDatetime = Field(description="取引日時（タイムゾーン付き）")


class RefundIn(pydantic.BaseModel):
    kind: Literal["refund"]
    refund_id: str = Field(description="事業者の返金ID（冪等キー）")
    of_txid: str = Field(description="返金する取引の取引ID")
    amount: int = Field(gt=0, le=MAX_AMOUNT, description="円")
    at: AwareDatetime = Field(description="返金日時（タイムゾーン付き）")


ItemIn = Annotated[TransactionIn | RefundIn, Field(discriminator="kind")]
_ITEM: Final = pydantic.TypeAdapter(ItemIn)


class Recorded(pydantic.BaseModel):
    id: str = Field(description="txid or refund_id")
    status: Literal["created", "unchanged"]


@api.post(
    "/transactions",
    auth=api_key,
    response={200: Recorded, **_errors(400, 409, 413, 422)},
    summary="取引・返金の報告（1件）",
    description="Idempotent by txid / refund_id: the same body again is `unchanged`, another body a 409.",
)
def post_transaction(request: HttpRequest, body: ItemIn) -> Any:
    provider, now, who = _provider(request), clock.now(), _who(request)
    if isinstance(body, RefundIn):
        try:
            _, created = record_refund(
                provider_key=provider.key,
                refund_id=body.refund_id,
                txid=body.of_txid,
                amount=body.amount,
                at=body.at,
                now=now,
                who=who,
            )
        except TransactionError as exc:
            if (
                exc.field == "txid"
            ):  # record_refund names the refunded transaction txid; the body says of_txid
                exc.field = "of_txid"
            raise
        return {"id": body.refund_id, "status": "created" if created else "unchanged"}
    _, created = record_transaction(
        provider_key=provider.key,
        txid=body.txid,
        service_id=body.service_id,
        kind=body.kind,
        amount=body.amount,
        at=body.at,
        now=now,
        who=who,
    )
    return {"id": body.txid, "status": "created" if created else "unchanged"}


_ITEMS: Final = pydantic.TypeAdapter(list[ItemIn])
# BatchIn documents its items as ItemIn; they are taken as they come (plain objects), and validated as ItemIn only
# when they are not all charges written the common way (_charges_frame): a model object per item costs more than
# storing it


class BatchIn(pydantic.BaseModel):
    items: SkipValidation[list[ItemIn]] = Field(description=f"at most {MAX_BATCH:,}; more is a 413")

    _limit = field_validator("items", mode="before")(_at_most(MAX_BATCH, "items"))


class BatchItemStatus(pydantic.BaseModel):
    index: int
    status: Literal["created", "unchanged"]


class BatchOut(pydantic.BaseModel):
    created: int
    unchanged: int
    items: list[BatchItemStatus]


def _reported(item: TransactionIn | RefundIn) -> BatchItem:
    if isinstance(item, RefundIn):
        return ReportedRefund(item.refund_id, item.of_txid, item.amount, item.at)
    return ReportedTransaction(item.txid, item.service_id, item.kind, item.amount, item.at)


def _record_batch(request: HttpRequest, items: list[TransactionIn | RefundIn]) -> HttpResponse:
    result = record_batch(
        provider_key=_provider(request).key,
        items=[_reported(item) for item in items],
        now=clock.now(),
        who=_who(request),
    )
    return _batch_answer(result)


def _batch_answer(result: BatchResult) -> HttpResponse:
    # written as it is (its shape is BatchOut; a status is "created" or "unchanged", nothing to escape):
    # validating and encoding 10,000 small objects again would cost a tenth of the request
    statuses = ",".join(f'{{"index":{i},"status":"{s}"}}' for i, s in enumerate(result.statuses))
    body = f'{{"created":{result.created},"unchanged":{result.unchanged},"items":[{statuses}]}}'
    return HttpResponse(body, content_type=api.get_content_type())


@api.post(
    "/transactions/batch",
    auth=api_key,
    response={200: BatchOut, **_errors(400, 409, 413, 422)},
    summary="取引・返金の一括報告（10,000件まで）",
    description="All items are checked first; a refused batch keeps nothing, and the error names each item "
    "by its index. Idempotent item by item.",
)
def post_batch(request: HttpRequest, body: BatchIn) -> Any:
    charges = _charges_frame(body.items)  # SkipValidation: the items as they came
    if charges is None:
        try:
            items = _ITEMS.validate_python(body.items)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                [{**e, "loc": ("body", "items", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        return _record_batch(request, items)
    result = record_charges(
        provider_key=_provider(request).key, charges=charges, now=clock.now(), who=_who(request)
    )
    return _batch_answer(result)


_CHARGE_KEYS: Final = frozenset(TransactionIn.model_fields)
_CHARGE_KINDS: Final = frozenset({"charge", "purchase"})
_AT_WRITTEN: Final = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d(?:\.\d{1,6})?[+-]\d{2}:\d{2}$"  # no leap second


def _charges_frame(items: object) -> pl.DataFrame | None:
    """The items as columns (mynapoint.applications.transactions.CHARGE_SCHEMA) when every one is a charge or
    purchase that TransactionIn accepts as it is — exactly its fields, strings and an integer amount within its
    bounds, ``at`` as ``YYYY-MM-DDThh:mm:ss[.ffffff]±hh:mm`` — else ``None``: the items are then validated one
    by one as ItemIn, with its messages."""
    if type(items) is not list or not items:
        return None
    if not all(type(item) is dict and item.keys() == _CHARGE_KEYS for item in items):
        return None
    columns = {
        name: [item[name] for item in items] for name in ("txid", "service_id", "kind", "amount", "at")
    }
    texts = ("txid", "service_id", "kind", "at")
    if not all(type(value) is str for name in texts for value in columns[name]):
        return None
    if not all(type(value) is int and 0 < value <= MAX_AMOUNT for value in columns["amount"]):
        return None
    if not set(columns["kind"]) <= _CHARGE_KINDS:
        return None
    frame = pl.DataFrame(columns, schema={**dict.fromkeys(texts, pl.String), "amount": pl.Int64})
    if not frame["at"].str.contains(_AT_WRITTEN).all():
        return None
    frame = frame.with_columns(
        pl.col("at").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
    )
    if frame["at"].null_count() or not frame["at"].dt.year().is_between(1, 9999).all():
        return None  # what Python's datetime (and so ItemIn) cannot hold is for ItemIn to refuse
    return frame.select(list(CHARGE_SCHEMA))


def _decode_csv(data: bytes) -> str:
    """UTF-8 (with or without a BOM), else Shift_JIS/CP932."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp932")
    except UnicodeDecodeError:
        raise ApiError(
            400,
            "bad_encoding",
            "CSVの文字コードは UTF-8 または Shift_JIS（CP932）です",
            "the CSV must be UTF-8 or Shift_JIS (CP932)",
        ) from None


def _csv_items(text: str) -> list[TransactionIn | RefundIn]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in CSV_HEADER if name not in header]
    if missing:
        raise ApiError(
            422,
            "bad_header",
            f"CSVの見出し行に {', '.join(missing)} がありません（{','.join(CSV_HEADER)}）",
            f"the CSV header lacks {', '.join(missing)} (expected {','.join(CSV_HEADER)}; more columns are ignored)",
        )
    columns = {name: header.index(name) for name in CSV_HEADER}
    rows: list[tuple[int, dict[str, str]]] = []
    for line, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        row = {name: cells[i].strip() for name, i in columns.items() if i < len(cells) and cells[i].strip()}
        rows.append((line, row))
        if len(rows) > MAX_BATCH:
            raise TooLarge(
                "items", sum(1 for cells in reader if any(c.strip() for c in cells)) + len(rows), MAX_BATCH
            )
    items: list[TransactionIn | RefundIn] = []
    problems: list[str] = []
    for index, (line, row) in enumerate(rows):
        try:
            items.append(_ITEM.validate_python(row))
        except pydantic.ValidationError as exc:
            problems.append(_pydantic_problems(exc.errors(), prefix=f"items[{index}] (line {line}) "))
    if problems:
        where = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ApiError(
            422, "invalid_input", f"入力内容に誤りがあります（{where}）", f"invalid input: {where}"
        )
    return items


@api.post(
    "/transactions/csv",
    auth=api_key,
    response={200: BatchOut, **_errors(400, 409, 413, 422)},
    summary="取引・返金の一括報告（CSV）",
    description="multipart `file`: UTF-8 (with or without BOM) or Shift_JIS/CP932, header "
    "`kind,txid,service_id,amount,at,refund_id,of_txid` (other columns are ignored). Items are the data rows, "
    "from index 0 (line 2). Answers as the batch.",
)
def post_csv(request: HttpRequest, file: File[UploadedFile]) -> Any:
    if (file.size or 0) > MAX_CSV_BYTES:
        raise ApiError(
            413, "too_large", f"CSVは{MAX_CSV_BYTES // 1024 // 1024}MBまでです", "the CSV file is too large"
        )
    return _record_batch(request, _csv_items(_decode_csv(file.read())))


# ------------------------------------------------------------------------------------------------ grants


class GrantItem(pydantic.BaseModel):
    cursor: int = Field(
        description="この付与指示の位置（カーソル）: 通常は grant_id と同じ。後の grant_id が先に確定した付与指示は、"
        "それより後の位置 / this grant's position: its grant_id, unless a grant with a later id committed "
        "first; then a position after it"
    )
    grant_id: int
    link_ref: str
    service_id: str
    measure: str
    amount: int = Field(description="付与するポイント（負の値は付与取消）")
    cumulative_after: int
    due_as_of: dt.date
    instructed_at: dt.datetime
    status: Literal["instructed", "acknowledged"]


class GrantsPage(pydantic.BaseModel):  # a plain model: ninja's Schema runs a Python validator per item
    model_config = pydantic.ConfigDict(from_attributes=True)  # the selector's GrantPage

    next_cursor: int = Field(description="次に after に渡す値（項目がなければ渡した after のまま）")
    items: list[GrantItem]


@api.get(
    "/grants",
    auth=api_key,
    response={200: GrantsPage, **_errors(422)},
    summary="付与指示（カーソル）",
    description="The provider's grant instructions in the order they were committed: each has its position "
    "(`cursor`), and a grant still to be committed always comes after the `next_cursor` already returned. The "
    "same `after` gives the same page.",
)
def get_grants(
    request: HttpRequest,
    after: After = 0,
    limit: Limit = 100,
) -> Any:
    return grant_instructions(provider=_provider(request), after=after, limit=limit)


class AckItem(Schema):
    grant_id: int
    reference: str = Field(max_length=100, description="事業者側の付与の参照番号")


class AckIn(Schema):
    items: list[AckItem] = Field(description=f"at most {MAX_BATCH:,}; more is a 413")

    _limit = field_validator("items", mode="before")(_at_most(MAX_BATCH, "items"))


class AckOut(Schema):
    acknowledged: int = Field(description="今回、付与完了になった指示の数")
    already: int = Field(description="すでに付与完了だった指示の数")


@api.post(
    "/grants/ack",
    auth=api_key,
    response={200: AckOut, **_errors(400, 403, 404, 413, 422)},
    summary="付与完了の通知",
    description="Each grant is acknowledged exactly once (payable → resident in the ledger); repeating it "
    "counts as `already`. All grant ids are checked first: an unknown one is a 404, another provider's a 403.",
)
def post_ack(request: HttpRequest, body: AckIn) -> Any:
    for index, item in enumerate(body.items):
        refuse_my_number(item.reference, where=f"items[{index}].reference")
    try:
        result = acknowledge_grants(
            provider=_provider(request),
            acks=[(item.grant_id, item.reference) for item in body.items],
            now=clock.now(),
            who=_who(request),
        )
    except UnknownGrant as exc:
        raise ApiError(
            404,
            "unknown_grant",
            f"items[{exc.index}]: 付与指示 {exc.grant_id} が見つかりません",
            f"items[{exc.index}]: unknown grant_id {exc.grant_id}",
        ) from None
    except NotYourGrant as exc:
        raise ApiError(
            403,
            "not_your_grant",
            f"items[{exc.index}]: 付与指示 {exc.grant_id} は他の事業者のものです",
            f"items[{exc.index}]: grant {exc.grant_id} belongs to another provider",
        ) from None
    return {"acknowledged": result.acknowledged, "already": result.already}


# ------------------------------------------------------------------------------------------------ stops


class StopIn(Schema):
    kind: Literal["death", "card_replaced", "improper"] = Field(
        description="death: 紐づけ停止（死亡） / card_replaced: 紛失による再発行 / improper: 不当な取引"
    )
    service_id: str
    new_service_id: str | None = Field(default=None, description="card_replaced: 再発行後の決済サービスID")
    occurred_on: dt.date
    note: str | None = None


class StopOut(Schema):
    status: Literal["recorded", "unchanged", "refused"]


@api.post(
    "/stops",
    auth=api_key,
    response={200: StopOut, **_errors(400, 404, 409, 413, 422)},
    summary="停止の通知（死亡・カード再発行・不当な取引）",
    description="death: the death date is recorded and no more points are earned from it; card_replaced: "
    "the link and the cap carry over to new_service_id (`refused` if that account is linked to another "
    "person); improper: recorded for the programme office. Repeating a notice is `unchanged`.",
)
def post_stop(request: HttpRequest, body: StopIn) -> Any:
    result = record_stop(
        provider=_provider(request),
        kind=body.kind,
        service_id=body.service_id,
        new_service_id=body.new_service_id,
        occurred_on=body.occurred_on,
        note=body.note,
        now=clock.now(),
        who=_who(request),
    )
    return {"status": result.status}


# ------------------------------------------------------------------------------------------------ schema


def export_schema() -> str:
    """The OpenAPI schema as committed in docs/openapi/provider-v1.json (sorted keys, 2-space indent)."""
    schema = api.get_openapi_schema(path_prefix=PATH_PREFIX)
    return json.dumps(schema, ensure_ascii=False, sort_keys=True, indent=2) + "\n"
