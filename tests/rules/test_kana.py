from __future__ import annotations

import pytest

from mynapoint.rules.kana import kana_key, same_kana_name


@pytest.mark.parametrize(
    ("bank", "resident"),
    [
        ("ｷﾖｳｺ", "キョウコ"),
        ("ﾔﾏﾀﾞ ﾊﾅｺ", "ヤマダ　ハナコ"),
        ("ｻﾄｳ ｺ-ｼﾞ", "さとう こーじ"),
        ("ﾊﾂﾄﾘ", "ハットリ"),
        ("ｼﾞｪｰﾑｽﾞ", "ジェームズ"),
    ],
)
def test_bank_holder_names_match_the_residents_kana(bank: str, resident: str) -> None:
    assert same_kana_name(bank, resident)


@pytest.mark.parametrize(
    ("a", "b"), [("ﾔﾏﾀﾞ ﾀﾛｳ", "ヤマダ ハナコ"), ("コウジ", "コージ"), ("ﾀﾅｶ", "タナカ タ")]
)
def test_different_names_do_not_match(a: str, b: str) -> None:
    assert not same_kana_name(a, b)


def test_wave_dash_is_not_turned_into_a_long_vowel() -> None:
    assert kana_key("ア～") != kana_key("アー")
