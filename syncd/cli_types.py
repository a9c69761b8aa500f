"""Click parameter types shared by the ``syncd`` commands."""

from __future__ import annotations

from typing import Any

import click

from syncd.models import MAX_BIGINT


class BigIntRange(click.IntRange):
    """An integer from ``minimum`` to MAX_BIGINT, the range both stores keep.

    click's own message for a non-integer names the type ("is not a valid
    integer range"), which reads as if a range was expected, so a
    non-integer gets a message of its own.
    """

    def __init__(self, minimum: int) -> None:
        super().__init__(min=minimum, max=MAX_BIGINT)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Any:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(
                f"{value!r} is not an integer; give one in the range "
                f"{self.min}<=x<={self.max}.",
                param,
                ctx,
            )
        return super().convert(number, param, ctx)


def bigint_range(minimum: int) -> click.IntRange:
    """Return the type of an integer option that a query sends to the database.

    Both stores reject integers above MAX_BIGINT, so such a value is a usage
    error (exit 2) that names the option and the range, not a traceback.
    """
    return BigIntRange(minimum)


# Offsets and row ids start at 1, so ``--after 0`` means the whole log.
OFFSET = bigint_range(0)
ROW_ID = bigint_range(1)
