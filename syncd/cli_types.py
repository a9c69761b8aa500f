"""Click parameter types shared by the ``syncd`` commands."""

from __future__ import annotations

import click

from syncd.models import MAX_BIGINT


def bigint_range(minimum: int) -> click.IntRange:
    """Return the type of an integer option that a query sends to the database.

    Both stores reject integers above MAX_BIGINT, so such a value is a usage
    error (exit 2) that names the option and the range, not a traceback.
    """
    return click.IntRange(min=minimum, max=MAX_BIGINT)


# Offsets and row ids start at 1, so ``--after 0`` means the whole log.
OFFSET = bigint_range(0)
ROW_ID = bigint_range(1)
