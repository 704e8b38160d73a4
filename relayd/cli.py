"""The ``relayd`` command: operator tools next to the daemon.

    relayd admin [-c etc/relay.ini] [-i KEY] "stats()"   one admin command over SSH
    relayd ca init [--dir etc/tls]                       create a private CA
    relayd cert issue NAME [--client] [--host H ...]     sign a relay or client certificate
    relayd admin-password USER                           a line for [admin] passwords
    relayd init DIR [--id NAME]                          a starter config and keys in DIR

``relayd admin`` runs OpenSSH's ``ssh`` against the ``[admin]`` listener,
checking the daemon's host key from its data directory (no trust on first
use), and exits with the command's status: 0 ok, 1 the command raised,
255 SSH could not connect or log in.
"""
import argparse
import getpass
import os
import shutil
import subprocess
import sys
import tempfile

import bcrypt

from relayd import config, init, tls_ca
from relayd.listeners import tcp_address
from relayd.ops.manhole import HOST_KEY_FILE


class CommandError(Exception):
    """A usage problem, printed as ``relayd: <message>``."""


def _admin_target(config_path):
    try:
        settings = config.load(config_path)
    except config.ConfigError as e:
        raise CommandError(str(e)) from None
    admin = settings.get("admin")
    if admin is None:
        raise CommandError(f"{config_path} has no [admin] section: the console is not enabled")
    try:
        host, port = tcp_address(admin.listen)
    except ValueError:
        raise CommandError(f"[admin] listen = {admin.listen}: relayd admin reaches tcp: "
                           "listeners only; use ssh directly") from None
    host_key = admin.host_key or os.path.join(settings.relay.data_dir, HOST_KEY_FILE)
    try:
        with open(host_key + ".pub", encoding="ascii") as f:
            public = f.read().split()
    except OSError as e:
        raise CommandError(f"cannot read the console's host key {host_key}.pub ({e.strerror}); "
                           "has the daemon been started with [admin] once?") from None
    return host, port, " ".join(public[:2])


def ssh_command(host, port, known_hosts, user, line, identity=None):
    """The OpenSSH command line that runs ``line`` on the console."""
    command = ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
               "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "StrictHostKeyChecking=yes"]
    if identity:
        command += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    return command + [f"{user}@{host}", "--", line]


def run_admin(args):
    host, port, public_key = _admin_target(args.config)
    if shutil.which("ssh") is None:
        raise CommandError("relayd admin needs the OpenSSH client (ssh) on PATH")
    known_host = host if port == 22 else f"[{host}]:{port}"
    with tempfile.NamedTemporaryFile("w", prefix="relayd-known-hosts-") as known_hosts:
        known_hosts.write(f"{known_host} {public_key}\n")
        known_hosts.flush()
        command = ssh_command(host, port, known_hosts.name, args.user, args.line, args.identity)
        return subprocess.run(command, stdin=subprocess.DEVNULL).returncode


def run_ca_init(args):
    cert, key = tls_ca.init_ca(args.dir, args.name, args.days)
    print(f"CA certificate {cert}\nCA key         {key} (keep it private)")
    return 0


def run_cert_issue(args):
    cert, key = tls_ca.issue(args.ca_dir, args.name, args.out_dir, args.host or None,
                             client=args.client, days=args.days)
    print(f"certificate {cert}\nkey         {key}")
    return 0


def run_admin_password(args):
    try:
        password = getpass.getpass(f"password for {args.user}: ")
        again = getpass.getpass("again: ") if password else None
    except EOFError:
        raise CommandError("no password given (end of input)") from None
    if not password or password != again:
        raise CommandError("empty password, or the two entries differ")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    print(f"{args.user}:{hashed}")
    return 0


def run_init(args):
    written = init.init(args.dir, args.id)
    print(f"relay {args.id}: {written['config']}\n"
          f"  data directory {written['data_dir']} (identity key {written['fingerprint']})\n"
          f"  /metrics bearer token in {written['token_file']}\n"
          f"  admin console keys go in {written['admin_keys']} (then uncomment [admin])\n"
          f"  federation peers name this relay with: key = {written['public_key']}\n"
          f"start it: twistd -n relayd --config {written['config']}")
    return 0


def parser():
    p = argparse.ArgumentParser(prog="relayd", description="relayd operator tools "
                                "(the daemon itself runs with: twistd -n relayd --config FILE)")
    sub = p.add_subparsers(dest="command", required=True)

    admin = sub.add_parser("admin", help="run one admin console command over SSH")
    admin.add_argument("-c", "--config", default="etc/relay.ini", help="the daemon's ini file")
    admin.add_argument("-i", "--identity", help="SSH private key (default: ssh's own choice)")
    admin.add_argument("-u", "--user", default="admin", help="SSH user name (any is accepted)")
    admin.add_argument("line", help='a console command, e.g. "stats()" or "ban(\'10.0.0.9\', 30)"')
    admin.set_defaults(run=run_admin)

    ca = sub.add_parser("ca", help="a private certificate authority")
    ca_init = ca.add_subparsers(dest="action", required=True).add_parser(
        "init", help="create ca.pem and ca.key")
    ca_init.add_argument("--dir", default="etc/tls", help="where the CA lives (default etc/tls)")
    ca_init.add_argument("--name", default="relayd private CA", help="the CA's common name")
    ca_init.add_argument("--days", type=int, default=3650)
    ca_init.set_defaults(run=run_ca_init)

    cert = sub.add_parser("cert", help="certificates signed by the private CA")
    issue = cert.add_subparsers(dest="action", required=True).add_parser(
        "issue", help="write NAME.pem and NAME.key")
    issue.add_argument("name", help="common name and file name, e.g. relay1 or alice")
    issue.add_argument("--client", action="store_true", help="a client certificate")
    issue.add_argument("--host", action="append",
                       help="a DNS name or IP the relay answers on (repeatable; default "
                            "localhost, 127.0.0.1, ::1)")
    issue.add_argument("--ca-dir", default="etc/tls", help="the CA directory (default etc/tls)")
    issue.add_argument("--out-dir", help="where to write (default: the CA directory)")
    issue.add_argument("--days", type=int, default=825)
    issue.set_defaults(run=run_cert_issue)

    password = sub.add_parser("admin-password", help="print a bcrypt line for [admin] passwords")
    password.add_argument("user")
    password.set_defaults(run=run_admin_password)
    starter = sub.add_parser("init", help="write a starter config and keys into a new directory")
    starter.add_argument("dir", help="the directory (created if missing; nothing is overwritten)")
    starter.add_argument("--id", default="relay1", help="the relay's name (default relay1)")
    starter.set_defaults(run=run_init)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, tls_ca.CAError, init.InitError) as e:
        print(f"relayd: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
