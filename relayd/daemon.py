"""Wiring: settings -> one MultiService holding every enabled service.

Nothing here opens a socket or a file; each service does that when started.
Children start in the order they are added and stop in reverse, so the file
pool and the journal outlive the listeners on shutdown.
"""
import gc
import os
import signal

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from relayd import config
from relayd.core.abuse import AbuseGuard
from relayd.core.dedup import DedupWindow
from relayd.core.history import History
from relayd.core.mailbox import Mailboxes
from relayd.core.ownership import FILE_NAME as OWNERSHIP_FILE, DamagedTable, Ownership
from relayd.core.router import Router
from relayd.federation.service import build_federation
from relayd.filepool import FilePool
from relayd.identity import IdentityService
from relayd.journal.lock import JournalLocked
from relayd.journal.service import Journal
from relayd.keydir.service import build_keydir
from relayd.listeners import listen_failure
from relayd.libp2p.hub import build_hub
from relayd.libp2p.service import Libp2pService
from relayd.ops import build_ops
from relayd.tcp.service import TcpRelayService
from relayd.tls import ServerTLS, TLSConfigError
from relayd.udp.service import UDPService


class StartFailed(SystemExit):
    """The daemon cannot start: twistd prints ``relayd: <why>`` and exits
    with status 1, without a traceback."""

    def __init__(self, why):
        super().__init__(f"relayd: {why}")


# Start-up problems an operator fixes (the message says what and where).
START_PROBLEMS = (JournalLocked, DamagedTable, TLSConfigError, OSError)

# Seconds between sweeps of the mailboxes for messages past [mailbox] ttl.
MAILBOX_EXPIRY = 3600.0


# The collector's first generation runs every 50,000 net allocations, not
# 700: a message lives for milliseconds (its entry, Deferreds and held
# copies), so at 700 thousands in flight were promoted and each then cost a
# full collection's share (a quarter of the CPU at saturation, and pauses of
# tens of ms); at 50,000 they die young.
GC_THRESHOLDS = (50000, 20, 100)


class Daemon(MultiService):
    """The root service; its attributes are the live parts of the relay.

    Services that can take new settings without a restart register a hook
    with ``on_reload``; ``reload()`` (SIGHUP, or the admin console) re-reads
    the config file and calls every hook with the new Settings.  Named
    children that have a ``stats()`` method contribute to ``stats()``.
    """

    log = Logger()

    def __init__(self, settings, reactor, config_path=None):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.config_path = config_path
        self.started_at = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.identity_service = IdentityService(settings.relay.id, settings.relay.data_dir)
        self.file_pool = FilePool(reactor)
        self.tls = None  # relayd.tls.ServerTLS when [tls] is enabled
        self._reload_hooks = []

    @property
    def identity(self):
        return self.identity_service.identity

    def privilegedStartService(self):
        """Start what needs privileges (listeners, state files); a problem
        the operator must fix ends the process with one line naming it."""
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartFailed(listen_failure(self.settings, e)) from None
        except START_PROBLEMS as e:
            raise StartFailed(str(e)) from None

    def startService(self):
        self.started_at = self.reactor.seconds()
        gc.set_threshold(*GC_THRESHOLDS)
        super().startService()
        if self.config_path is not None:
            self.reactor.callWhenRunning(self._install_signal_handlers)

    def _install_signal_handlers(self):
        """Under twistd (after the reactor's own handlers are in place): SIGHUP
        reloads; SIGTERM/SIGINT stop gracefully and exit 0, where twistd would
        otherwise re-raise the signal at exit."""
        signal.signal(signal.SIGHUP, self._on_sighup)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        self.log.info("relay {relay_id} running (pid {pid}): SIGHUP reloads {path}, SIGTERM stops",
                      relay_id=self.settings.relay.id, pid=os.getpid(), path=self.config_path)

    def _on_sighup(self, signum, frame):
        self.reactor.callFromThread(self.reload)

    def _on_stop_signal(self, signum, frame):
        self.log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        self.reactor.callFromThread(self.reactor.stop)

    def on_reload(self, hook):
        """Call ``hook(settings)`` on every successful reload."""
        self._reload_hooks.append(hook)

    def reload(self):
        """Re-read the config file; returns a one-line summary for people."""
        if self.config_path is None:
            return "no config file to reload"
        try:
            settings = config.load(self.config_path)
        except config.ConfigError as e:
            self.log.error("reload refused: {error}", error=str(e))
            return f"reload refused: {e}"
        self.settings = settings
        for hook in self._reload_hooks:
            try:
                hook(settings)
            except Exception:
                self.log.failure("reload hook {hook!r} failed", hook=hook)
        self.log.info("configuration reloaded from {path}", path=self.config_path)
        return f"reloaded {self.config_path}"

    def uptime(self):
        return 0.0 if self.started_at is None else self.reactor.seconds() - self.started_at

    def stats(self):
        """One JSON-able dict: relay facts plus each named service's stats()."""
        out = {"relay": self.settings.relay.id, "uptime": round(self.uptime(), 3)}
        if self.identity is not None:
            out["fingerprint"] = self.identity.fingerprint
        for svc in self:
            if svc.name and hasattr(svc, "stats"):
                out[svc.name] = svc.stats()
        return out


def build_core(daemon):
    """The router and its journal, abuse guard and key ownership table."""
    s, reactor = daemon.settings, daemon.reactor
    ownership = Ownership(os.path.join(s.relay.data_dir, OWNERSHIP_FILE), daemon.file_pool)
    ownership.setServiceParent(daemon)
    router = Router(
        s.relay.id, reactor,
        DedupWindow(reactor, s.dedup.window, s.dedup.max_entries),
        Mailboxes(reactor, s.mailbox.max_per_peer, s.mailbox.ttl),
        History(s.tcp.history_limit if s.enabled("tcp") else 500),
        ownership, retention=s.journal.retention, registry=daemon.registry)
    j = s.journal
    journal = Journal(
        os.path.join(s.relay.data_dir, "journal"), daemon.file_pool, reactor, router,
        fsync=j.fsync, fsync_interval=j.fsync_interval, batch_interval=j.batch_interval,
        segment_size=j.segment_size, retention=j.retention, max_size=j.max_size,
        prune_interval=j.prune_interval, registry=daemon.registry)
    journal.setServiceParent(daemon)
    router.journal = journal
    # Mail for peers that never come back is dropped past its ttl, not kept until a restart.
    expiry = TimerService(min(max(s.mailbox.ttl, 60.0), MAILBOX_EXPIRY), router.mailboxes.expire)
    expiry.clock = reactor
    expiry.setServiceParent(daemon)
    r = s.ratelimit
    guard = AbuseGuard(reactor, r.messages, r.per_seconds, r.ban_after, r.ban_window, r.ban_duration)
    daemon.on_reload(guard.reload)
    daemon.router, daemon.journal, daemon.guard = router, journal, guard


def build(settings, reactor, config_path=None):
    """Compose the daemon for ``settings``; services listen only once started."""
    daemon = Daemon(settings, reactor, config_path)
    daemon.identity_service.setServiceParent(daemon)
    daemon.file_pool.setServiceParent(daemon)
    if settings.enabled("tls"):
        daemon.tls = ServerTLS(settings.tls, reactor, daemon.file_pool)
        daemon.on_reload(daemon.tls.apply_settings)
        daemon.tls.setServiceParent(daemon)
    if settings.enabled("udp"):
        udp = UDPService(settings.udp, reactor, daemon.registry)
        daemon.on_reload(lambda new: udp.reconfigure(new.get("udp")))
        udp.setServiceParent(daemon)
    build_core(daemon)
    tcp = None
    if settings.enabled("tcp"):
        tcp = TcpRelayService(daemon, settings.tcp, daemon.router, daemon.guard)
        tcp.setServiceParent(daemon)
    libp2p = None
    if settings.enabled("libp2p"):
        libp2p = Libp2pService(daemon, settings.libp2p, reactor)
        libp2p.setServiceParent(daemon)
    build_hub(daemon, libp2p)
    if settings.enabled("federation"):
        build_federation(daemon)
    if tcp is not None:
        build_keydir(daemon, tcp)
    build_ops(daemon)
    return daemon
