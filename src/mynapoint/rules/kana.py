"""Comparing kana names: the holder name of a bank account against the resident's (program.md §5).

Bank holder names (全銀 format) are half-width katakana without small kana, with ``-`` for the long vowel.
Names are compared on a key: NFKC, hiragana → katakana, small kana → large, every dash → ー, no spaces.
``jaconv.normalize`` is not used: it turns ～ into ー (ecosystem.md).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import jaconv

__all__ = ["kana_key", "same_kana_name"]

_SMALL_TO_LARGE = str.maketrans("ァィゥェォッャュョヮヵヶ", "アイウエオツヤユヨワカケ")
_DASHES = re.compile(r"[-‐‑‒–—―−ｰー─━]")
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=65536)
def kana_key(name: str) -> str:
    text = unicodedata.normalize("NFKC", name)
    text = jaconv.hira2kata(text)
    text = text.translate(_SMALL_TO_LARGE)
    text = _DASHES.sub("ー", text)
    return _SPACES.sub("", text)


def same_kana_name(a: str, b: str) -> bool:
    return kana_key(a) == kana_key(b)
