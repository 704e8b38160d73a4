"""twistd entry point: ``twistd -n relayd --config etc/relay.ini``.

``Options`` reads and validates the ini file (a bad file is a usage error, so
twistd exits non-zero before anything listens); ``makeService`` only wires.
Unless ``--pidfile`` is given, twistd's pid file is ``<data_dir>/twistd.pid``
instead of ``twistd.pid`` in the working directory, so relays with their
own configs can run side by side from one directory.
"""
import os

from twisted.python import usage

from relayd import config, privileges

DEFAULT_PIDFILE = "twistd.pid"      # twistd's own default, in the working directory


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
        self._pidfile_in_data_dir()

    def _pidfile_in_data_dir(self):
        """Under twistd, move the default pid file into the data directory
        (created here: twistd writes the file before any service starts)."""
        twistd = getattr(self, "parent", None)
        if twistd is None or twistd.get("pidfile") != DEFAULT_PIDFILE:
            return
        data_dir = self["settings"].relay.data_dir
        os.makedirs(os.path.join(twistd.get("rundir") or ".", data_dir), exist_ok=True)
        twistd["pidfile"] = os.path.join(data_dir, DEFAULT_PIDFILE)


def makeService(options, reactor=None):
    """Build the daemon's MultiService from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    from relayd.daemon import build
    daemon = build(options["settings"], reactor, config_path=options["config"])
    daemon.run_as = privileges.target(getattr(options, "parent", None))
    return daemon
