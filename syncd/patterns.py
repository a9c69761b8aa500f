"""Shell-style patterns such as ``invoice.*``, as regular expressions for SQL.

The syntax and the case-sensitive matching are those of
:func:`fnmatch.fnmatchcase`, which sinks use for their ``types``: ``*``
matches any text, ``?`` one character, ``[seq]`` one character in seq and
``[!seq]`` one character not in it. An unclosed ``[`` is literal.

The expressions use only syntax that Python's ``re`` and PostgreSQL's ``~``
read alike, because SQLAlchemy's pysqlite dialect (1.4 and later) runs
REGEXP with ``re.search``.
"""

from __future__ import annotations

_WILDCARDS = frozenset("*?[")
# Characters escaped with a backslash outside and inside a bracket expression.
_SPECIAL = frozenset(".^$*+?()[]{}|\\")
_SPECIAL_IN_BRACKETS = frozenset("\\]^-[")


def is_pattern(text: str) -> bool:
    """Return whether ``text`` contains a wildcard: ``*``, ``?`` or ``[``."""
    return not _WILDCARDS.isdisjoint(text)


def pattern_to_regex(pattern: str) -> str:
    """Translate a shell-style pattern into a regular expression for the whole text."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        end = _bracket_end(pattern, index) if char == "[" else None
        if char == "*":
            # One ".*" for a run of stars keeps backtracking down.
            if not parts or parts[-1] != ".*":
                parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif end is not None:
            parts.append(_bracket(pattern[index:end]))
            index = end + 1
        else:
            parts.append(_escape(char, _SPECIAL))
    # (?s) lets "." match a newline in Python, as it does in PostgreSQL. It
    # must come first in both. \A and \Z anchor at the ends of the text in both.
    return "(?s)\\A" + "".join(parts) + "\\Z"


def _bracket_end(pattern: str, start: int) -> int | None:
    """Return the index of the ``]`` that closes the ``[`` before ``start``.

    As in fnmatch, a ``]`` right after ``[`` or ``[!`` is a member, not the end.
    Returns None when nothing closes it.
    """
    index = start
    if pattern.startswith("!", index):
        index += 1
    if pattern.startswith("]", index):
        index += 1
    end = pattern.find("]", index)
    return None if end < 0 else end


def _bracket(body: str) -> str:
    """Translate the text between ``[`` and ``]`` into a bracket expression."""
    negate = body.startswith("!")
    if negate:
        body = body[1:]
    members: list[str] = []
    index = 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            low, high = body[index], body[index + 2]
            # fnmatch drops a reversed range such as z-a, which matches nothing.
            if low <= high:
                low_text = _escape(low, _SPECIAL_IN_BRACKETS)
                members.append(f"{low_text}-{_escape(high, _SPECIAL_IN_BRACKETS)}")
            index += 3
        else:
            members.append(_escape(body[index], _SPECIAL_IN_BRACKETS))
            index += 1
    if not members:
        # Nothing is left to match, so [!...] matches any one character and
        # [...] matches nothing.
        return "." if negate else "(?!)"
    return ("[^" if negate else "[") + "".join(members) + "]"


def _escape(char: str, special: frozenset[str]) -> str:
    return "\\" + char if char in special else char
