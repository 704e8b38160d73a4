"""Wiring: settings -> one MultiService holding every enabled service.

Nothing here opens a socket or a file; each service does that when started.
Children start in the order they are added and stop in reverse, so the file
pool and the journal outlive the listeners on shutdown.
"""
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService

from relayd.filepool import FilePool
from relayd.identity import IdentityService


class Daemon(MultiService):
    """The root service; its attributes are the live parts of the relay."""

    def __init__(self, settings, reactor, config_path=None):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.config_path = config_path
        self.started_at = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.identity_service = IdentityService(settings.relay.id, settings.relay.data_dir)
        self.file_pool = FilePool(reactor)

    @property
    def identity(self):
        return self.identity_service.identity

    def startService(self):
        self.started_at = self.reactor.seconds()
        super().startService()


def build(settings, reactor, config_path=None):
    """Compose the daemon for ``settings``; services listen only once started."""
    daemon = Daemon(settings, reactor, config_path)
    daemon.identity_service.setServiceParent(daemon)
    daemon.file_pool.setServiceParent(daemon)
    return daemon
