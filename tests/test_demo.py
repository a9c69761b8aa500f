"""``syncd demo`` end to end on loopback, and its sample output in the README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# The listening port and the time taken differ on each run.
VARYING = [
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"^took \d+\.\d+s$", re.M), "took SECONDS"),
]


def mask_varying_parts(text: str) -> list[str]:
    """Return the lines of ``text`` with the port and the time replaced."""
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return text.strip().splitlines()


def fenced_blocks(text: str) -> list[str]:
    """Return the contents of each fenced code block of a Markdown text."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("```"):
            if current is not None:
                current.append(line)
        elif current is None:
            current = []
        else:
            blocks.append("\n".join(current))
            current = None
    return blocks


def readme_demo_block() -> str:
    """Return the fenced block of README.md that shows the demo's output."""
    blocks = fenced_blocks(README.read_text())
    [block] = [block for block in blocks if "events emitted:" in block]
    return block


def test_demo_matches_readme() -> None:
    """syncd demo succeeds and prints the lines that README.md shows."""
    # A process of its own, because the demo lowers the level of the syncd
    # logger for good and runs a daemon with its threads.
    result = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    expected = mask_varying_parts(readme_demo_block())
    assert mask_varying_parts(result.stdout) == expected
