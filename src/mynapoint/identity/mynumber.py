"""Refusing a My Number (個人番号) typed where it does not belong.

The system never asks for, reads or stores a My Number. Free-text fields and uploads are checked for a
12-digit number whose check digit is valid (P·Q mod 11; 0 if the remainder is ≤ 1, else 11 − remainder) and
refuse it. The check does not catch every typo, and is only used to keep such numbers out.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MyNumberRefused", "contains_my_number", "is_my_number", "refuse_my_number"]

_TWELVE = re.compile(r"(?<!\d)(\d{4})[ -]?(\d{4})[ -]?(\d{4})(?!\d)")


class MyNumberRefused(ValueError):  # noqa: N818 - named for what the resident sees
    """A value that looks like a My Number. The message never repeats the number."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(
            f"{where}: マイナンバー（個人番号）と思われる12桁の番号は入力できません"
            f" / a 12-digit number that looks like a My Number cannot be entered here"
        )


def is_my_number(digits: str) -> bool:
    if len(digits) != 12 or not digits.isdigit():
        return False
    body = [int(c) for c in digits[:11]]
    # weights Q for positions counted from the right of the 11-digit body: 2..7, then 2..6
    total = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(reversed(body), start=1))
    remainder = total % 11
    check = 0 if remainder <= 1 else 11 - remainder
    return check == int(digits[11])


def contains_my_number(text: str) -> bool:
    normalized = unicodedata.normalize("NFKC", text)
    return any(is_my_number("".join(m.groups())) for m in _TWELVE.finditer(normalized))


def refuse_my_number(text: str, *, where: str) -> str:
    """Return ``text`` unchanged, or raise :class:`MyNumberRefused` naming the field."""
    if contains_my_number(text):
        raise MyNumberRefused(where)
    return text
