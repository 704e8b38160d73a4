"""The admin console's SSH server: modern algorithms, login timeout, caps, audit log.

* Only modern algorithms are offered (the ssh-audit policy of the tests):
  key exchange ML-KEM/X25519 hybrid and Curve25519, AES-CTR ciphers,
  HMAC-SHA2 MACs; no 3DES, no CBC, no HMAC-MD5/SHA1, no SHA1 key exchange,
  no NIST curves.  The host key is Ed25519.
* A connection that has not logged in within ``login_timeout`` seconds is
  dropped, whatever stage it is at (version exchange, key exchange, auth).
* At most ``max_connections`` SSH connections at once and
  ``max_connections_per_ip`` from one address; others are closed at once,
  counted and logged (at most 20 lines a minute per address).
* Every login and failed login is logged with the source address, the user
  and the key fingerprint; a client's disconnect is logged at info level.
"""
from prometheus_client import Counter
from twisted.conch.error import IgnoreAuthentication
from twisted.conch.manhole_ssh import ConchFactory
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import getNS
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol
from twisted.logger import Logger

from relayd.ops.ratelog import LogBudget
from relayd.names import shown

KEX = [b"mlkem768x25519-sha256", b"curve25519-sha256", b"curve25519-sha256@libssh.org"]
CIPHERS = [b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"]
MACS = [b"hmac-sha2-512", b"hmac-sha2-256"]

log = Logger(namespace="relayd.ops.admin")


def fingerprint(key):
    """``SHA256:...`` as OpenSSH (``ssh-keygen -l``) shows it."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def _blob_fingerprint(blob):
    try:
        return fingerprint(keys.Key.fromString(blob))
    except (keys.BadKeyError, ValueError, TypeError):
        return "unreadable key"


class AdminUserAuth(userauth.SSHUserAuthServer):
    """User authentication that logs each attempt's outcome."""

    attemptsBeforeDisconnect = 6

    def tryAuth(self, kind, user, data):
        d = super().tryAuth(kind, user, data)
        if kind == b"none":
            return d
        detail = "password"
        if kind == b"publickey":
            try:
                detail = "key " + _blob_fingerprint(getNS(data[1:], 2)[1])
            except Exception:               # a truncated packet: conch refuses it too
                detail = "malformed key"
        d.addCallbacks(self._logged_in, self._refused, callbackArgs=(user, detail),
                       errbackArgs=(user, kind, detail))
        return d

    def auth_publickey(self, packet):
        """Refuse a key blob that does not parse without Conch's error-level log line."""
        try:
            keys.Key.fromString(getNS(packet[1:], 2)[1])
        except Exception:
            return defer.fail(UnauthorizedLogin("unreadable public key"))
        return super().auth_publickey(packet)

    def _source(self):
        return getattr(self.transport, "source_ip", "?")

    def _logged_in(self, result, user, detail):
        self.transport.logged_in_as = user.decode("utf-8", "replace")
        log.info("admin login: {user} from {ip} with {detail}", user=shown(user.decode(
            "utf-8", "replace"), 64), ip=self._source(), detail=detail)
        return result

    def _refused(self, failure, user, kind, detail):
        if not failure.check(IgnoreAuthentication):    # a key offer that would be accepted
            ip = self._source()
            if self.transport.factory.log_budget.allow(ip):
                log.warn("admin login failed: {user} from {ip} with {detail}",
                         user=shown(user.decode("utf-8", "replace"), 64), ip=ip, detail=detail)
        return failure


class AdminTransport(transport.SSHServerTransport):
    """The server transport with the modern algorithm set and the login timer."""

    supportedKeyExchanges = KEX
    supportedCiphers = CIPHERS
    supportedMACs = MACS
    logged_in_as = None
    source_ip = "?"
    _login_timer = None

    def connectionMade(self):
        super().connectionMade()
        self._login_timer = self.factory.clock.callLater(self.factory.login_timeout,
                                                         self._too_slow)

    def _too_slow(self):
        self._login_timer = None
        self.factory.timeouts.inc()
        ip = self.source_ip
        if self.factory.log_budget.allow(ip):
            log.info("admin: dropped a connection from {ip} that did not log in within "
                     "{seconds}s", ip=ip, seconds=self.factory.login_timeout)
        self.transport.abortConnection()

    def setService(self, service):
        super().setService(service)
        if service.name == b"ssh-connection" and self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    def receiveError(self, reasonCode, description):
        """A client's disconnect message: routine, so info (Conch says error)."""
        log.info("admin: {user} disconnected (code {code}: {description})",
                 user=shown(self.logged_in_as or "a client", 64), code=reasonCode,
                 description=shown(description, 100))

    def connectionLost(self, reason=None):
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self.factory.release(self)
        super().connectionLost(reason)


class AdminSSHFactory(ConchFactory):
    """Builds AdminTransports within the connection caps."""

    noisy = False

    protocol = AdminTransport

    def __init__(self, portal, settings, clock, registry):
        super().__init__(portal)
        self.services = {**self.services, b"ssh-userauth": AdminUserAuth}
        self.publicKeys, self.privateKeys = {}, {}     # ConchFactory's are class-level, shared
        self.clock = clock
        self.configure(settings)
        self.open = {}                  # ip -> open connections
        self.log_budget = LogBudget(clock, log, "admin console refusals",
                                    counted_in="relayd_admin_refused")
        self.refused = Counter("relayd_admin_refused", "SSH connections refused by a cap",
                               ["cap"], registry=registry)
        self.timeouts = Counter("relayd_admin_login_timeouts",
                                "SSH connections dropped for not logging in in time",
                                registry=registry)

    def configure(self, settings):
        self.login_timeout = settings.login_timeout
        self.max_connections = settings.max_connections
        self.max_per_ip = settings.max_connections_per_ip

    def buildProtocol(self, addr):
        ip = getattr(addr, "host", "?")
        cap = None
        if sum(self.open.values()) >= self.max_connections:
            cap = "max_connections"
        elif self.open.get(ip, 0) >= self.max_per_ip:
            cap = "max_connections_per_ip"
        if cap is not None:
            self.refused.labels(cap).inc()
            if self.log_budget.allow(ip):
                log.warn("admin: refused an SSH connection from {ip} ([admin] {cap} reached)",
                         ip=ip, cap=cap)
            return None
        t = protocol.Factory.buildProtocol(self, addr)     # SSHFactory's logs once per connection
        t.supportedPublicKeys = [alg for key in self.privateKeys.values()
                                 for alg in key.supportedSignatureAlgorithms()]
        t.source_ip = ip
        self.open[ip] = self.open.get(ip, 0) + 1
        return t

    def release(self, t):
        ip = getattr(t, "source_ip", None)
        if ip in self.open:
            self.open[ip] -= 1
            if not self.open[ip]:
                del self.open[ip]
