from __future__ import annotations

import pytest

from mynapoint.identity.mynumber import MyNumberRefused, contains_my_number, is_my_number, refuse_my_number


def test_the_check_digit_of_the_public_sample() -> None:
    assert is_my_number("123456789018")
    assert not is_my_number("123456789017")  # wrong check digit
    assert not is_my_number("12345678901")  # 11 digits


@pytest.mark.parametrize(
    "text", ["123456789018", "番号は1234 5678 9018です", "1234-5678-9018", "１２３４５６７８９０１８"]
)
def test_a_my_number_in_free_text_is_found_in_any_width_or_grouping(text: str) -> None:
    assert contains_my_number(text)


@pytest.mark.parametrize(
    "text", ["4000-0001", "1234567890123", "0463-94-4711", "ヤマダ ハナコ", "123456789017"]
)
def test_other_numbers_pass(text: str) -> None:
    assert refuse_my_number(text, where="memo") == text


def test_the_refusal_names_the_field_and_never_repeats_the_number() -> None:
    with pytest.raises(MyNumberRefused) as caught:
        refuse_my_number("memo 123456789018", where="memo")
    assert "memo" in str(caught.value)
    assert "123456789018" not in str(caught.value)
