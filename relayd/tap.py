"""twistd entry point: ``twistd -n relayd --config etc/relay.ini``.

``Options`` reads and validates the ini file (a bad file is a usage error, so
twistd exits non-zero before anything listens); ``makeService`` only wires.
"""
from twisted.python import usage

from relayd import config


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Run the relayd relay daemon with the services its ini file enables."
    optParameters = [
        ["config", "c", "etc/relay.ini", "the ini file to read"],
    ]

    def postOptions(self):
        """Load and validate the ini file (``config.load``: every key, and the
        rules across sections), so that every problem is reported before
        anything listens."""
        try:
            self["settings"] = config.load(self["config"])
        except config.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options, reactor=None):
    """Build the daemon's MultiService from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    from relayd.daemon import build
    return build(options["settings"], reactor, config_path=options["config"])
