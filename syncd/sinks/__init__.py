"""Delivery of logged events to the user's applications, one module per kind."""
