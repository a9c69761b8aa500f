"""Every commented example block in config.example.toml passes check-config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd.cli import main

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"
SECRETS = {
    "STRIPE_API_KEY": "sk_test_example",
    "STRIPE_WEBHOOK_SECRET": "whsec_example",
    "GITHUB_TOKEN": "ghp_example",
    "GITHUB_WEBHOOK_SECRET": "github-secret",
    "SHOPIFY_ACCESS_TOKEN": "shpat_example",
    "SHOPIFY_WEBHOOK_SECRET": "shpss_example",
    "ORDERS_WEBHOOK_SECRET": "whsec_dGVzdHNlY3JldDEyMzQ1Njc4OTA=",
    "ORDERS_TOKEN": "orders-token",
    "TICKETS_TOKEN": "tickets-token",
    "TICKETS_WEBHOOK_SECRET": "tickets-secret",
    "SYNCD_SINK_SECRET": "whsec_dGVzdHNlY3JldDEyMzQ1Njc4OTA=",
}


def example_blocks() -> dict[str, str]:
    """Return each '# example: NAME' block with its comment marks removed."""
    blocks: dict[str, str] = {}
    for match in re.finditer(
        r"^# example: (\S+)\n((?:#.*\n?)+)", EXAMPLE.read_text(), re.M
    ):
        lines = [
            line.removeprefix("#").removeprefix(" ")
            for line in match.group(2).splitlines()
        ]
        blocks[match.group(1)] = "\n".join(lines) + "\n"
    return blocks


def test_every_connector_has_example():
    """The example file has a block for each built-in connector and sink kind."""
    names = set(example_blocks())
    expected = {
        "github",
        "shopify",
        "standard-webhooks",
        "rest",
        "sink-http",
        "sink-command",
        "sink-jsonl",
    }
    assert expected <= names


@pytest.mark.parametrize("name", sorted(example_blocks()))
def test_example_block_valid(name, tmp_path):
    """One uncommented block, added to the example file, passes check-config."""
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text() + "\n" + example_blocks()[name])
    config.chmod(0o600)

    result = CliRunner().invoke(main, ["check-config", "-c", str(config)], env=SECRETS)

    assert result.exit_code == 0, result.output
