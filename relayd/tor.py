"""The ``[tor]`` service: the client listener published as a v3 onion service.

The onion key is an Ed25519 key kept in the data directory (created on first
start), so the ``.onion`` address is known before Tor is reached and stays
the same across restarts.  The service talks to Tor through txtorcon, either
over an existing control port (``control_port``) or by launching a tor
binary, and adds the onion with ``ADD_ONION`` (it does not wait for the
descriptor upload, so a Tor without network still accepts it).  Tor removes
the onion when the control connection closes, i.e. when the daemon stops.
"""
import base64
import hashlib
import os

import txtorcon
from cryptography.hazmat.primitives import serialization
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger

from relayd.identity import load_or_create
from relayd.listeners import tcp_address

KEY_FILE = "onion_ed25519.key"


def onion_address(public_bytes):
    """The v3 ``.onion`` address of a raw 32-byte Ed25519 public key."""
    version = b"\x03"
    checksum = hashlib.sha3_256(b".onion checksum" + public_bytes + version).digest()[:2]
    return base64.b32encode(public_bytes + checksum + version).decode().lower() + ".onion"


def tor_key_blob(private_key):
    """Tor's ``ED25519-V3:`` key blob (the expanded secret key) for ADD_ONION."""
    seed = private_key.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    expanded = bytearray(hashlib.sha512(seed).digest())
    expanded[0] &= 248
    expanded[31] &= 127
    expanded[31] |= 64
    return "ED25519-V3:" + base64.b64encode(bytes(expanded)).decode()


def parse_reply(text):
    """``KEY=VALUE`` lines of a control-port reply as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def onion_target(settings):
    """``(virtual_port, "host:port")`` for the ``[tor]`` section of ``settings``."""
    tor = settings.tor
    if tor.target:
        host, _, port = tor.target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"[tor] target: {tor.target!r} is not host:port")
        target_port = int(port)
    elif settings.enabled("tcp"):
        host, target_port = tcp_address(settings.tcp.listen)
        if target_port == 0:
            raise ValueError("[tor] target: required when [tcp] listen uses port 0")
    else:
        raise ValueError("[tor] target: required when [tcp] is not enabled")
    return tor.port or target_port, f"{host}:{target_port}"


class OnionService(Service):
    """Publishes ``target`` as ``<address>.onion:<port>`` once Tor answers.

    A failed attempt (tor not reachable, ADD_ONION refused) or a lost control
    connection is retried after 1 s, doubling up to ``max_delay``.
    """

    log = Logger()
    initial_delay = 1.0
    max_delay = 60.0

    def __init__(self, daemon, settings, connect=txtorcon.connect, launch=txtorcon.launch):
        self.setName("tor")
        self.daemon = daemon
        self.settings = settings.tor
        self.port, self.target = onion_target(settings)
        self.key_path = self.settings.onion_key or os.path.join(settings.relay.data_dir, KEY_FILE)
        self._connect, self._launch = connect, launch
        self.address = None
        self.published = False
        self.problem = "starting"
        self.tor = None
        self._starting = None
        self._retry = None
        self._failures = 0

    def startService(self):
        super().startService()
        self._attempt()

    def _attempt(self):
        self._retry = None
        self._starting = self._publish()
        self._starting.addErrback(self._failed)

    @defer.inlineCallbacks
    def _publish(self):
        key, created = yield self.daemon.file_pool.run(load_or_create, self.key_path)
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        self.address = onion_address(public)
        self.log.info("onion key {how} {path}: {address}", path=self.key_path,
                      how="created" if created else "loaded", address=self.address)
        self.problem = "waiting for tor"
        tor = self.tor = yield self._reach_tor()
        tor.protocol.on_disconnect.addBoth(lambda _: self._lost(tor))
        reply = yield tor.protocol.queue_command(
            f"ADD_ONION {tor_key_blob(key)} Port={self.port},{self.target}")
        service_id = parse_reply(reply).get("ServiceID")
        if f"{service_id}.onion" != self.address:
            raise RuntimeError(f"tor created {service_id}.onion, expected {self.address}")
        self.published, self.problem, self._failures = True, None, 0
        self.log.info("onion service {address}:{port} -> {target}",
                      address=self.address, port=self.port, target=self.target)

    def _reach_tor(self):
        reactor = self.daemon.reactor
        if self.settings.control_port:
            return self._connect(reactor, clientFromString(reactor, self.settings.control_port))
        return self._launch(reactor, tor_binary=self.settings.tor_binary,
                            data_directory=os.path.join(self.daemon.settings.relay.data_dir, "tor"))

    def _failed(self, failure):
        if failure.check(defer.CancelledError):
            return
        delay = self._schedule()
        self.problem = f"onion service not published: {failure.getErrorMessage()}"
        self.log.error("{problem} (next try in {delay:.0f}s)", problem=self.problem, delay=delay)
        self._drop_tor()

    def _lost(self, tor):
        if self.running and tor is self.tor:
            self.tor, self.published = None, False
            delay = self._schedule()
            self.problem = "the tor control connection closed; the onion is gone until it is back"
            self.log.error("{problem} (next try in {delay:.0f}s)", problem=self.problem, delay=delay)

    def _schedule(self):
        delay = min(self.max_delay, self.initial_delay * 2 ** self._failures)
        self._failures += 1
        self._retry = self.daemon.reactor.callLater(delay, self._attempt)
        return delay

    def _drop_tor(self):
        tor, self.tor, self.published = self.tor, None, False
        if tor is None:
            return None
        d = defer.maybeDeferred(tor.quit)
        d.addErrback(lambda f: self.log.info("tor control connection: {why}",
                                             why=f.getErrorMessage()))
        return d

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._starting.cancel()
        return self._drop_tor()

    def stats(self):
        return {"address": self.address, "port": self.port, "target": self.target,
                "published": self.published}

    def health(self):
        return self.problem
