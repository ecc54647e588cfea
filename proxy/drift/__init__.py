"""Drift windows, the request-path watch, alarms shared through Redis."""
