"""Listening services from endpoint strings.

Every stream listener of the daemon is built here, so that a port that
cannot be bound stops the daemon with a clear message (``strports.service``
raises synchronously in privilegedStartService).
"""
from twisted.application import strports


def stream_service(daemon, description, factory):
    """A service listening on ``description`` (an endpoint string)."""
    return strports.service(description, factory, reactor=daemon.reactor)
