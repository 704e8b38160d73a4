"""Helpers for the operations tests: SSH keys, the admin console over
OpenSSH, and HTTP requests to the monitoring listener."""
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from relayd.cli import ssh_command
from tests.daemon import Relayd, free_port, relay_ini

NO_SSH = None if shutil.which("ssh") else "needs the OpenSSH client (Debian openssh-client)"


class InlinePool:
    """A file pool that runs jobs at once, on the calling thread."""

    def run(self, f, *args):
        return defer.maybeDeferred(f, *args)


def ssh_key(directory, name):
    """Write an Ed25519 key pair for ssh (``name`` and ``name.pub``);
    returns (private key path, public line)."""
    key = Ed25519PrivateKey.generate()
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                          serialization.PublicFormat.OpenSSH).decode()
    public += f" {name}\n"
    with open(path + ".pub", "w") as f:
        f.write(public)
    return path, public


def known_hosts(directory, port, host_key_pub):
    """A known_hosts file trusting the console's host key (``.pub`` file)."""
    path = os.path.join(directory, "known_hosts")
    with open(host_key_pub) as src, open(path, "w") as out:
        out.write(f"[127.0.0.1]:{port} " + " ".join(src.read().split()[:2]) + "\n")
    return path


def password_ssh(port, known, user, password, line):
    """Run ``line`` logging in with a password only (OpenSSH reads it through
    SSH_ASKPASS); a CompletedProcess."""
    askpass = os.path.join(os.path.dirname(known), "askpass")
    with open(askpass, "w") as f:
        f.write(f"#!/bin/sh\necho '{password}'\n")
    os.chmod(askpass, 0o700)
    command = ssh_command("127.0.0.1", port, known, user, line)
    # ssh keeps the first value given for an option: these win over BatchMode=yes.
    command[1:1] = ["-o", "BatchMode=no", "-o", "PreferredAuthentications=password",
                    "-o", "PubkeyAuthentication=no"]
    env = dict(os.environ, SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    return subprocess.run(command, capture_output=True, timeout=30, env=env,
                          stdin=subprocess.DEVNULL)


def admin_ssh(port, key, known, line, tty=False, stdin=None, timeout=30):
    """Run ``line`` on the console with OpenSSH; a CompletedProcess (text)."""
    command = ssh_command("127.0.0.1", port, known, "admin", line, key)
    if tty:
        command = command[:1] + ["-tt"] + command[1:-2]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def http_get(port, path, token=None, scheme="http", context=None):
    """(status, body bytes, headers) of a GET to the monitoring listener."""
    request = urllib.request.Request(f"{scheme}://localhost:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def http_json(port, path, token=None, **https):
    status, body, _ = http_get(port, path, token, **https)
    return status, json.loads(body)


def metric_value(text, name, **labels):
    """The value of sample ``name`` with ``labels`` in Prometheus text, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


OPS_INI = relay_ini("""
[admin]
listen = tcp:{admin}:interface=127.0.0.1
authorized_keys = {workdir}/admin_keys
{admin_extra}
[http]
listen = tcp:{http}:interface=127.0.0.1
stats_interval = 1
""", id="ops1")


class OpsRelay:
    """A twistd relayd with [tcp], [admin] and [http] on free ports, an
    operator key in its authorized_keys and a stranger key that is not;
    ``passwords`` (bytes) becomes its ``[admin] passwords`` file."""

    def __init__(self, testcase, passwords=None):
        self.testcase = testcase
        self.admin_extra = ""
        self.workdir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.workdir)
        self.key, public = ssh_key(self.workdir, "operator")
        self.wrong_key, _ = ssh_key(self.workdir, "stranger")
        with open(os.path.join(self.workdir, "admin_keys"), "w") as f:
            f.write("# operators\n" + public)
        if passwords is not None:
            path = os.path.join(self.workdir, "admin_passwords")
            with open(path, "wb") as f:
                f.write(passwords)
            self.admin_extra = f"passwords = {path}"
        self.start()

    def start(self):
        self.ports = {"tcp": free_port(), "admin": free_port(), "http": free_port()}
        self.relay = Relayd(self.testcase, OPS_INI, workdir=self.workdir,
                            admin_extra=self.admin_extra, **self.ports)
        self.relay.start(wait_tcp=list(self.ports.values()))
        self.host_key = os.path.join(self.relay.data_dir, "ssh_host_ed25519_key")
        self.known = known_hosts(self.workdir, self.ports["admin"], self.host_key + ".pub")

    def admin(self, line, key=None):
        """(exit code, stdout, stderr) of ``line`` run over OpenSSH."""
        done = admin_ssh(self.ports["admin"], key or self.key, self.known, line)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
