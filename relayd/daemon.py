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

from relayd import config, jsonfast, privileges, reloading
from relayd.cluster import build_cluster
from relayd.core.abuse import AbuseGuard
from relayd.core.dedup import DedupWindow
from relayd.core.history import History
from relayd.core.mailbox import Mailboxes
from relayd.core.membership import Memberships
from relayd.core.ownership import FILE_NAME as OWNERSHIP_FILE, DamagedTable, Ownership
from relayd.core.router import Router
from relayd.fdbudget import FdBudget
from relayd.federation.service import build_federation
from relayd.filepool import FilePool
from relayd.identity import IdentityService
from relayd.journal.lock import JournalLocked
from relayd.journal.service import Journal
from relayd.keydir.service import build_keydir
from relayd.libp2p.hub import build_hub
from relayd.libp2p.service import Libp2pService
from relayd.listeners import listen_failure, rebind, retls
from relayd.ops import build_ops, ops_service
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
        self.cluster = None  # relayd.cluster.node.ClusterNode when [cluster] is enabled
        self.federation = None  # relayd.federation.service.FederationService when [federation] is
        self.run_as = None  # (uid, gid) twistd --uid/--gid switches to after the privileged start
        self.listeners = {}  # section -> relayd.listeners.Listener (filled by stream_service)
        self.fd_budget = FdBudget(settings.relay.fd_reserve, reactor, self.registry)
        self._reload_hooks = []

    @property
    def identity(self):
        return self.identity_service.identity

    def privilegedStartService(self):
        """Start what needs privileges (listeners, state files); a problem
        the operator must fix ends the process with one line naming it."""
        try:
            super().privilegedStartService()
            if self.run_as is not None and os.geteuid() == 0:
                privileges.hand_over(self.settings, *self.run_as)
        except CannotListenError as e:
            raise StartFailed(listen_failure(self.settings, e)) from None
        except START_PROBLEMS as e:
            raise StartFailed(str(e)) from None

    def startService(self):
        if self.run_as is not None:         # twistd --uid: we now run as that user
            try:
                privileges.check_writable(self.settings)
            except privileges.CannotRun as e:
                self.log.critical("relayd cannot run: {why}", why=str(e))
                raise SystemExit(f"relayd cannot run: {e}") from None
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
        """Re-read the config file and apply what a running daemon can (see
        ``relayd.reloading``); returns a summary for people, one line per change."""
        if self.config_path is None:
            return "no config file to reload"
        try:
            settings = config.load(self.config_path)
        except config.ConfigError as e:
            self.log.error("reload refused: {error}", error=str(e))
            return f"reload refused: {e}"
        changes = reloading.plan(self.settings, settings)
        self.settings = settings
        lines, failed = [], 0
        # in STARTABLE's order: [tls] before the listeners that use it
        problems = {name: self._start(name) for name in reloading.STARTABLE
                    if name in changes.start}
        for hook in list(self._reload_hooks):
            try:
                hook(settings)
            except Exception:
                self.log.failure("reload hook {hook!r} failed", hook=hook)
        for section, description in sorted(changes.moves.items()):
            lines.append(rebind(self, section, description))
            failed += "cannot listen" in lines[-1]
        lines += [retls(self, section) for section in reloading.tls_changes(self)]
        if problems.get("tls", True) is None:
            self.tls.setServiceParent(self)         # once its listeners use it
        for name, problem in problems.items():
            lines.append(f"[{name}]: started" if problem is None else f"[{name}]: {problem}")
            failed += problem is not None
        lines += [f"{label}: applied" for label in changes.applied]
        lines += [f"{label}: needs a restart" for label in changes.restart]
        for line in lines:
            (self.log.warn if "needs a restart" in line or "cannot" in line
             else self.log.info)("reload: {line}", line=line)
        if changes.restart or failed:
            self.log.warn("configuration from {path} applied in part: {count} settings need a "
                          "restart, {failed} failed", path=self.config_path,
                          count=len(changes.restart), failed=failed)
            head = (f"reload of {self.config_path}: {len(changes.restart)} need a restart, "
                    f"{failed} failed")
        else:
            self.log.info("configuration reloaded from {path}", path=self.config_path)
            head = f"reloaded {self.config_path}" + ("" if lines else ": no changes")
        return "\n".join([head] + lines)

    def _start(self, name):
        """Start a section added by a reload; None, or why it could not start."""
        service = None
        try:
            if name == "tls":
                tls = ServerTLS(self.settings.tls, self.reactor, self.file_pool)
                tls.privilegedStartService()        # the certificate, before any listener
                self.tls = tls
                self.on_reload(tls.apply_settings)
            else:
                service = ops_service(self, name)
                service.setServiceParent(self)
        except Exception as e:
            if service is not None and service.parent is not None:
                service.disownServiceParent()
            self.log.failure("reload: could not start [{name}]", name=name)
            return f"cannot start ({e})"
        return None

    def uptime(self):
        return 0.0 if self.started_at is None else self.reactor.seconds() - self.started_at

    def stats(self):
        """One JSON-able dict: relay facts plus each named service's stats()."""
        out = {"relay": self.settings.relay.id, "uptime": round(self.uptime(), 3)}
        if self.identity is not None:
            out["fingerprint"] = self.identity.fingerprint
        out["fd_budget"] = self.fd_budget.stats()
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
        ownership, retention=s.journal.retention, registry=daemon.registry,
        memberships=Memberships(s.mailbox.max_rooms_per_peer, s.mailbox.max_members_per_room))
    j = s.journal
    journal = Journal(
        os.path.join(s.relay.data_dir, "journal"), daemon.file_pool, reactor, router,
        fsync=j.fsync, fsync_interval=j.fsync_interval, batch_interval=j.batch_interval,
        segment_size=j.segment_size, retention=j.retention, max_size=j.max_size,
        prune_interval=j.prune_interval, checkpoint_interval=j.checkpoint_interval,
        checkpoint_bytes=j.checkpoint_bytes, registry=daemon.registry)
    journal.setServiceParent(daemon)
    checkpoint_core(journal, router)
    router.journal = journal
    # Mail for peers that never come back is dropped past its ttl, not kept until a restart.
    expiry = TimerService(min(max(s.mailbox.ttl, 60.0), MAILBOX_EXPIRY), router.mailboxes.expire)
    expiry.clock = reactor
    expiry.setServiceParent(daemon)
    r = s.ratelimit
    guard = AbuseGuard(reactor, r.messages, r.per_seconds, r.ban_after, r.ban_window, r.ban_duration)
    daemon.on_reload(guard.reload)
    daemon.router, daemon.journal, daemon.guard = router, journal, guard


def checkpoint_core(journal, router):
    """Register the state the router's replay rebuilds with the journal's checkpoints."""
    dedup, mailboxes, history = router.dedup, router.mailboxes, router.history
    journal.add_state("dedup", lambda: dedup.snapshot(exclude=router.unsettled()),
                      dedup.load_snapshot)
    journal.add_state("mailboxes", mailboxes.snapshot,
                      lambda data: mailboxes.load_snapshot(data, _stored_entry))
    journal.add_state("history", history.snapshot, history.load_snapshot)
    memberships = router.memberships
    journal.add_state("rooms", memberships.snapshot, memberships.load_snapshot)


def _stored_entry(line):
    """The entry of a stored ``message.delivery_line``, read back from a checkpoint."""
    entry = jsonfast.loads_own(line)
    del entry["type"]
    return entry


def build(settings, reactor, config_path=None):
    """Compose the daemon for ``settings``; services listen only once started."""
    daemon = Daemon(settings, reactor, config_path)
    daemon.identity_service.setServiceParent(daemon)
    daemon.file_pool.setServiceParent(daemon)
    daemon.fd_budget.setServiceParent(daemon)
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
        build_federation(daemon, clustered=settings.enabled("cluster"))
    if settings.enabled("cluster"):
        build_cluster(daemon, tcp)
    if tcp is not None:
        build_keydir(daemon, tcp)
    build_ops(daemon)
    return daemon
