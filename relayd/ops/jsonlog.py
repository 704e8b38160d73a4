"""JSON log output for twistd: ``twistd -n --logger=relayd.ops.jsonlog.stdout relayd ...``.

Each event is one JSON object per line (``twisted.logger`` JSON, readable
with ``eventsFromJSONLogFile``), with its structured fields (``stats``,
``ip``, ``peer_id``...) kept as fields rather than only formatted text.
"""
import sys

from twisted.logger import jsonFileLogObserver


def stdout():
    """An observer writing JSON lines to standard output."""
    return jsonFileLogObserver(sys.stdout)
