"""Tests of shell-style type patterns: translation, and matching in each database."""

from __future__ import annotations

import fnmatch
import itertools
import random
import re
from datetime import UTC, datetime

import pytest

from connectors.base import EventRecord
from syncd.patterns import is_pattern, pattern_to_regex
from syncd.queries import list_events
from syncd.store import Store, record_events

T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
# Characters that are special to fnmatch, to regular expressions or to SQL
# LIKE, and a few plain ones.
ALPHABET = "ab.-!^]\\[*?%_|$(){}+\n"
PATTERNS = [
    "invoice.*",
    "charge.?ailed",
    "[!i]*",
    "*[.]*",
    "[a-c]*",
    "[c-a]*",
    "[!c-a]",
    "[]]*",
    "[!]]*",
    "[a-]*",
    "[--/]*",
    "*[\\]*",
    "*[^]*",
    "*[[]*",
    "[",
    "a[b",
    "**",
    "*%",
    "*_*",
    "(a|b)*",
    "$*",
    "*\n*",
]
TYPES = [
    "invoice.paid",
    "charge.failed",
    "charge.Failed",
    "a",
    "b",
    "c",
    "]",
    "-",
    ".",
    "/x",
    "a\\b",
    "a^b",
    "a[b",
    "[",
    "ab%",
    "ab_c",
    "(a|b)",
    "$a",
    "two\nlines",
    "",
]


def random_text(rng: random.Random, max_length: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_length)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("invoice.paid", False), ("invoice.*", True), ("a?", True), ("[ab]", True)],
)
def test_is_pattern(text: str, expected: bool) -> None:
    """Only text with *, ? or [ is a pattern."""
    assert is_pattern(text) is expected


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_matches_like_fnmatch(pattern: str) -> None:
    """Each listed pattern matches exactly the types that fnmatchcase matches."""
    regex = re.compile(pattern_to_regex(pattern))
    for type_ in TYPES:
        expected = fnmatch.fnmatchcase(type_, pattern)
        assert (regex.search(type_) is not None) is expected, (pattern, type_)


def test_regex_matches_like_fnmatch_random() -> None:
    """Random patterns over special characters agree with fnmatchcase."""
    rng = random.Random(20240501)
    for _ in range(3000):
        pattern = random_text(rng, 8)
        regex = re.compile(pattern_to_regex(pattern))
        for _ in range(20):
            text = random_text(rng, 6)
            expected = fnmatch.fnmatchcase(text, pattern)
            assert (regex.search(text) is not None) is expected, (pattern, text)


def test_database_matches_like_fnmatch(store: Store) -> None:
    """SQLite and PostgreSQL list exactly the entries that fnmatchcase matches."""
    records = [
        EventRecord(key=f"evt_{index}", type=type_, occurred_at=T0, payload="{}")
        for index, type_ in enumerate(TYPES)
    ]
    with store.session() as session:
        record_events(session, "payments", "poll", records, T0)
    rng = random.Random(7)
    random_patterns = [random_text(rng, 5) for _ in range(200)]

    for pattern in itertools.chain(PATTERNS, random_patterns):
        listed = list_events(store, types=(pattern,), limit=len(TYPES))
        expected = [t for t in TYPES if fnmatch.fnmatchcase(t, pattern)]
        assert [event.type for event in listed] == expected, pattern
