"""The ``[admin]`` service: a Python console over SSH (twisted.conch manhole).

Interactive sessions (``ssh -p 2222 admin@127.0.0.1``) get a colored Python
prompt whose namespace holds the live daemon and the admin commands.  An
SSH exec request (``ssh ... 'stats()'``, or ``relayd admin "stats()"``)
evaluates one command and returns its output with exit status 0, or the
traceback on stderr with exit status 1.

Logins: public keys from ``authorized_keys`` (re-read on reload), and
bcrypt-hashed passwords only when ``passwords`` names a file of
``user:$2b$...`` lines.  The host key (Ed25519) is created in the data
directory on first start and kept.
"""
import contextlib
import io
import os
import traceback

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import MultiService
from twisted.conch import interfaces as iconch
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.filepool import write_atomically
from relayd.listeners import stream_service
from relayd.names import shown
from relayd.ops.commands import AdminCommands
from relayd.ops.sshserver import AdminSSHFactory

HOST_KEY_FILE = "ssh_host_ed25519_key"


def load_or_create_host_key(path):
    """The conch Key at ``path``, generating an Ed25519 key (mode 0600) if absent.

    ``path.pub`` gets the public half, which ``relayd admin`` checks against.
    """
    if not os.path.exists(path):
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption())
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        write_atomically(path, pem, 0o600)
    key = keys.Key.fromFile(path)
    if not os.path.exists(path + ".pub"):
        with open(path + ".pub", "wb") as f:
            f.write(key.public().toString("openssh") + b" relayd-admin\n")
    return key


def read_authorized_keys(path):
    """Public keys from an OpenSSH ``authorized_keys`` file (bad lines are logged)."""
    with open(path, "rb") as f:
        return list(readAuthorizedKeyFile(f))


@implementer(ICredentialsChecker)
class BcryptPasswords:
    """Password logins from a file of ``user:$2b$...`` lines.

    The file is read and the bcrypt hash checked on the reactor's thread
    pool: a deliberate bcrypt takes a quarter second, which the reactor
    thread (and the file thread, with the journal) must not spend.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path, reactor):
        self.path = path
        self.reactor = reactor

    def requestAvatarId(self, credentials):
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._check,
                                         credentials.username, credentials.password)

    # checked for unknown users, so that the time taken does not tell who exists
    DECOY = b"$2b$12$uBVTCXr4DIgrmSmsd0xIlOoWGuGlyzVI/dK8Nq5cK50IyO3FD1MPK"

    def _check(self, username, password):
        hashed = None
        with open(self.path, "rb") as f:
            for line in f:
                user, _, value = line.strip().partition(b":")
                if user == username:
                    hashed = value
                    break
        try:
            if bcrypt.checkpw(password, hashed or self.DECOY) and hashed:
                return username
        except ValueError:
            pass
        raise UnauthorizedLogin(f"bad password for {username!r}")


class AuthorizedKeys:
    """``IAuthorizedKeysDB``: the same key list for every user name."""

    def __init__(self):
        self.keys = []

    def getAuthorizedKeys(self, username):
        return self.keys


def evaluate(namespace, source):
    """Run one command; a Deferred firing with (output, succeeded).

    An expression's value is shown with repr() (commands return Text, shown
    as itself); printed output is kept; a Deferred result is waited for.
    """
    out = io.StringIO()
    try:
        code = compile(source, "<admin>", "eval")
    except SyntaxError:
        code = None
    try:
        with contextlib.redirect_stdout(out):
            if code is None:
                exec(compile(source, "<admin>", "exec"), namespace)
                result = None
            else:
                result = eval(code, namespace)
    except Exception:
        return defer.succeed((out.getvalue() + traceback.format_exc(), False))

    def show(value):
        text = out.getvalue()
        if value is not None:
            text += repr(value) + "\n"
        return text, True

    d = defer.maybeDeferred(lambda: result)
    d.addCallback(show)
    d.addErrback(lambda f: (out.getvalue() + "".join(traceback.format_exception(
        f.type, f.value, f.getTracebackObject())), False))
    return d


class ConsoleSession(manhole_ssh.TerminalSession):
    """A terminal session that also runs one command per exec request."""

    log = Logger()
    reactor = None
    namespaceFactory = None

    user = "?"

    def execCommand(self, proto, cmd):
        source = cmd.decode("utf-8", "replace")
        self.log.info("admin command by {user}: {command}", user=shown(self.user, 64),
                      command=shown(source))
        # Reply to the exec request before output and exit status follow.
        d = task.deferLater(self.reactor, 0, evaluate, self.namespaceFactory(), source)
        d.addCallback(lambda outcome: self._finish(proto, *outcome))

    @staticmethod
    def _finish(proto, text, ok):
        data = text.encode("utf-8", "backslashreplace")
        if ok:
            proto.outReceived(data)
            proto.processEnded(Failure(error.ProcessDone(0)))
        else:
            proto.errReceived(data)
            proto.processEnded(Failure(error.ProcessTerminated(exitCode=1)))

    def openShell(self, proto):
        self.terminal = self.transportFactory(
            proto, self.chainedProtocolFactory(), iconch.IConchUser(self.original),
            self.width, self.height)

    def windowChanged(self, newWindowSize):
        rows, columns = newWindowSize[:2]
        self.terminal.chainedProtocol.terminalProtocol.terminalSize(columns, rows)

    def eofReceived(self):
        """End of the client's input: nothing to do."""


class LoggedManhole(manhole.ColoredManhole):
    """The interactive console, logging each line it runs with the user's name."""

    log = Logger()

    def __init__(self, namespace, user):
        super().__init__(namespace)
        self.user = user

    def lineReceived(self, line):
        if line.strip():
            self.log.info("admin command by {user}: {command}", user=shown(self.user, 64),
                          command=shown(line.decode("utf-8", "replace")))
        super().lineReceived(line)


class ConsoleRealm(manhole_ssh.TerminalRealm):
    """Sessions whose console namespace is made fresh by ``namespace_factory``."""

    sessionFactory = ConsoleSession

    def __init__(self, namespace_factory, reactor):
        super().__init__()
        self.namespace_factory = namespace_factory
        self.reactor = reactor

    def _getAvatar(self, avatarId):
        user = super()._getAvatar(avatarId)
        session = user.original.getComponent(iconch.ISession)
        session.reactor = self.reactor
        session.namespaceFactory = self.namespace_factory
        session.user = avatarId.decode("utf-8", "replace")
        session.chainedProtocolFactory = lambda: insults.ServerProtocol(
            LoggedManhole, self.namespace_factory(), session.user)
        return user


class ManholeService(MultiService):
    """The ``[admin]`` section: SSH console on loopback (by default)."""

    log = Logger()

    def __init__(self, daemon, settings):
        super().__init__()
        self.setName("admin")
        self.daemon = daemon
        self.settings = settings
        self.authorized = AuthorizedKeys()
        checkers = [SSHPublicKeyChecker(self.authorized)]
        if settings.passwords:
            checkers.append(BcryptPasswords(settings.passwords, daemon.reactor))
        commands = AdminCommands(daemon)
        realm = ConsoleRealm(commands.namespace, daemon.reactor)
        self.factory = AdminSSHFactory(portal.Portal(realm, checkers), settings, daemon.reactor,
                                       daemon.registry)
        self.host_key_path = settings.host_key or os.path.join(
            daemon.settings.relay.data_dir, HOST_KEY_FILE)
        stream_service(daemon, settings.listen, self.factory).setServiceParent(self)
        daemon.on_reload(self.apply_settings)

    def privilegedStartService(self):
        self._load_keys()
        super().privilegedStartService()

    def startService(self):
        if not self.factory.privateKeys:
            self._load_keys()
        super().startService()

    def _load_keys(self):
        host_key = load_or_create_host_key(self.host_key_path)
        self.factory.publicKeys = {host_key.sshType(): host_key.public()}
        self.factory.privateKeys = {host_key.sshType(): host_key}
        self.authorized.keys = read_authorized_keys(self.settings.authorized_keys)
        self.log.info("admin console on {listen}: {count} authorized keys, host key "
                      "{fingerprint}", listen=self.settings.listen,
                      count=len(self.authorized.keys),
                      fingerprint=host_key.fingerprint(keys.FingerprintFormats.SHA256_BASE64))

    def apply_settings(self, settings):
        """Reload hook: re-read ``authorized_keys`` (on the file thread)."""
        admin = settings.get("admin")
        if admin is None:
            return
        self.settings = admin
        self.factory.configure(admin)
        d = self.daemon.file_pool.run(read_authorized_keys, admin.authorized_keys)
        d.addCallback(self._set_keys)
        d.addErrback(lambda f: self.log.error("admin keys not reloaded: {why}",
                                              why=f.getErrorMessage()))

    def _set_keys(self, authorized):
        self.authorized.keys = authorized
        self.log.info("admin console: {count} authorized keys", count=len(authorized))

    def stats(self):
        return {"listen": self.settings.listen, "authorized_keys": len(self.authorized.keys)}
