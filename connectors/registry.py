"""Lookup of connector classes through the ``syncd.connectors`` entry point group.

A connector installed with pip registers itself in its own package metadata::

    [project.entry-points."syncd.connectors"]
    myapi = "syncd_myapi:MyApiConnector"
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from connectors.base import Connector

GROUP = "syncd.connectors"

_BUILT_IN = {
    "stripe": "connectors.stripe:StripeConnector",
    "github": "connectors.github:GitHubConnector",
    "shopify": "connectors.shopify:ShopifyConnector",
    "standard-webhooks": "connectors.standard:StandardWebhooksConnector",
    "rest": "connectors.rest:RestConnector",
}


@cache
def available() -> dict[str, str]:
    """Return every connector name with the object path it loads from."""
    found = dict(_BUILT_IN)
    for entry in entry_points(group=GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def load_connector(name: str) -> type[Connector]:
    """Import and return the connector class registered as ``name``.

    Raises KeyError for an unknown name.
    """
    target = available()[name]
    module_name, _, attribute = target.partition(":")
    module = __import__(module_name, fromlist=[attribute])
    connector = getattr(module, attribute)
    if not (isinstance(connector, type) and issubclass(connector, Connector)):
        raise TypeError(f"{target} registered as connector {name!r} is no Connector")
    return connector
