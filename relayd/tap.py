"""twistd entry point: ``twistd -n relayd --config etc/relay.ini``.

``Options`` reads and validates the ini file (a bad file is a usage error, so
twistd exits non-zero before anything listens); ``makeService`` only wires.
"""
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from relayd import config, privileges


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Run the relayd relay daemon with the services its ini file enables."
    optParameters = [
        ["config", "c", "etc/relay.ini", "the ini file to read"],
    ]

    def postOptions(self):
        """Load the ini file and wire a trial daemon on a memory reactor, so
        that every problem, including one only the wiring finds (a section
        that needs another), is reported before anything listens."""
        from relayd.daemon import build
        try:
            self["settings"] = config.load(self["config"])
            build(self["settings"], MemoryReactorClock())
        except (config.ConfigError, ValueError) as e:
            raise usage.UsageError(str(e)) from None


def makeService(options, reactor=None):
    """Build the daemon's MultiService from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    from relayd.daemon import build
    daemon = build(options["settings"], reactor, config_path=options["config"])
    daemon.run_as = privileges.target(getattr(options, "parent", None))
    return daemon
