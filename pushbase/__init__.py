"""Pushbase: a self-hosted data hub with push APIs in both directions."""

__version__ = "0.1.0"
