"""Tests of the shared parsing helpers: item texts kept from a listed page."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.parsing import json_object_with_item_texts
from syncd.errors import ResponseError


def response(content: bytes) -> httpx.Response:
    return httpx.Response(
        200, content=content, headers={"content-type": "application/json"}
    )


leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    others=st.dictionaries(st.text(max_size=5), values, max_size=4),
    items=st.lists(values, max_size=5),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_texts_are_the_items_as_sent(
    others: dict[str, Any], items: list[Any], indent: int | None, ascii_only: bool
) -> None:
    """The body parses as json.loads does, and each text is its item's slice."""
    body = {**others, "data": items}
    content = json.dumps(body, indent=indent, ensure_ascii=ascii_only).encode()
    parsed, texts = json_object_with_item_texts(response(content), "data")
    assert parsed == json.loads(content)
    assert len(texts) == len(items)
    for text, item in zip(texts, items, strict=True):
        assert text is not None
        assert text in content.decode()
        assert json.loads(text) == item


def test_text_keeps_number_spelling_and_escapes() -> None:
    """Big integers, float digits and \\u escapes stay exactly as sent."""
    item = '{"id": "e", "n": 123456789012345678901234567890, "f": 0.10, "s": "\\u00e9"}'
    content = f'{{"data": [{item}], "has_more": false}}'.encode()
    _, texts = json_object_with_item_texts(response(content), "data")
    assert texts == [item]


@pytest.mark.parametrize(
    "item",
    [
        '{"id": "a", "id": "b"}',
        '{"x": {"y": 1, "y": 2}}',
        '{"x": NaN}',
        "[Infinity]",
        '{"x": 1e999}',
        "[-2E+400]",
    ],
)
def test_unstorable_item_has_no_text(item: str) -> None:
    """An item with a repeated key or NaN gets None, and its neighbours a text."""
    content = f'{{"data": [1, {item}, 3]}}'.encode()
    parsed, texts = json_object_with_item_texts(response(content), "data")
    assert texts == ["1", None, "3"]
    assert len(parsed["data"]) == 3


def test_repeated_array_key_uses_last() -> None:
    """A repeated top-level key keeps the last value, as json.loads does."""
    content = b'{"data": [1], "data": [2, 3]}'
    parsed, texts = json_object_with_item_texts(response(content), "data")
    assert parsed == {"data": [2, 3]}
    assert texts == ["2", "3"]


def test_repeated_array_key_last_not_array() -> None:
    """When the last value of the key is not an array, there are no texts."""
    content = b'{"data": [1], "data": {}}'
    parsed, texts = json_object_with_item_texts(response(content), "data")
    assert parsed == {"data": {}}
    assert texts == []


def test_missing_key_has_no_texts() -> None:
    parsed, texts = json_object_with_item_texts(response(b'{"other": [1]}'), "data")
    assert parsed == {"other": [1]}
    assert texts == []


def test_byte_order_mark_accepted() -> None:
    """A UTF-8 BOM is skipped, as json.loads does with bytes."""
    content = b'\xef\xbb\xbf{"data": ["\xc3\xa9"]}'
    parsed, texts = json_object_with_item_texts(response(content), "data")
    assert parsed == {"data": ["é"]}
    assert texts == ['"é"']


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b'{"data": [1,]}',
        b'{"data": [1}',
        b'{"data": [1]',
        b'{"data": [1]} extra',
        b'{"data": [1] "x": 2}',
        b'{"a": 1,}',
        b"{'data': []}",
        b"<html>502</html>",
    ],
)
def test_invalid_json_raises(content: bytes) -> None:
    """Text that json.loads rejects raises ResponseError naming the content type."""
    with pytest.raises(ResponseError, match="is not valid JSON: "):
        json_object_with_item_texts(response(content), "data")


def test_array_body_raises() -> None:
    """A JSON body that is not an object raises ResponseError."""
    with pytest.raises(ResponseError, match="expected a JSON object"):
        json_object_with_item_texts(response(b"[1, 2]"), "data")
