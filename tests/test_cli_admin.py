"""``relayd admin``: one console command over SSH, for scripts and cron;
``relayd admin-password`` lines accepted by ``[admin] passwords``."""
import subprocess
import sys

import bcrypt
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.trial import unittest

from relayd import cli
from relayd.ops.manhole import BcryptPasswords
from tests.daemon import REPO, Relayd
from tests.test_ops_support import NO_SSH, OpsRelay, ssh_key


def relayd_admin(*args):
    done = subprocess.run([sys.executable, "-m", "relayd.cli", "admin", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


class AdminCommandTests(unittest.TestCase):
    timeout = 120
    skip = NO_SSH

    def setUp(self):
        self.ops = OpsRelay(self)

    def admin(self, line, key=None):
        return relayd_admin("--config", self.ops.relay.config, "-i", key or self.ops.key, line)

    def test_runs_one_command_and_checks_the_host_key(self):
        code, out, err = self.admin("stats()")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("relay: ops1\n", out)
        self.assertEqual(self.admin("ban('192.0.2.7', 2)")[1], "banned 192.0.2.7 for 2 minutes\n")
        self.assertIn("192.0.2.7", self.admin("bans()")[1])

    def test_exit_status_follows_the_command(self):
        code, out, err = self.admin("kick(")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("SyntaxError", err)
        self.assertEqual(self.admin("stats()", key=self.ops.wrong_key)[0], 255)

    def test_a_host_key_other_than_the_daemons_is_refused(self):
        _, impostor = ssh_key(self.ops.workdir, "impostor")
        with open(self.ops.host_key + ".pub", "w") as f:
            f.write(impostor)
        code, _, err = self.admin("stats()")
        self.assertEqual(code, 255)
        self.assertIn("Host key verification failed", err)


class AdminUsageTests(unittest.TestCase):
    def test_config_without_admin_section(self):
        relay = Relayd(self, "[relay]\ndata_dir = {data_dir}\n")
        code, _, err = relayd_admin("--config", relay.config, "stats()")
        self.assertEqual(code, 2)
        self.assertIn("has no [admin] section", err)

    def test_a_listener_ssh_cannot_reach(self):
        relay = Relayd(self, "[relay]\ndata_dir = {data_dir}\n[admin]\nlisten = unix:/tmp/x.sock\n"
                             "authorized_keys = {workdir}/relay.ini\n")
        code, _, err = relayd_admin("--config", relay.config, "stats()")
        self.assertEqual(code, 2)
        self.assertIn("relayd admin reaches tcp: listeners only", err)

    def test_daemon_never_started(self):
        relay = Relayd(self, "[relay]\ndata_dir = {data_dir}\n[admin]\n"
                             "authorized_keys = {workdir}/relay.ini\n")
        code, _, err = relayd_admin("--config", relay.config, "stats()")
        self.assertEqual(code, 2)
        self.assertIn("has the daemon been started with [admin] once?", err)

    @defer.inlineCallbacks
    def test_admin_password_line_is_accepted_by_the_checker(self):
        answers = iter(["correct horse", "correct horse"])
        self.patch(cli.getpass, "getpass", lambda prompt: next(answers))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("other:not-a-hash\n")
            self.patch(sys, "stdout", f)
            self.assertEqual(cli.main(["admin-password", "ops"]), 0)
        checker = BcryptPasswords(path, reactor)
        user = yield checker.requestAvatarId(UsernamePassword(b"ops", b"correct horse"))
        self.assertEqual(user, b"ops")
        for name, password in [(b"ops", b"wrong"), (b"other", b"x"), (b"nobody", b"x")]:
            with self.assertRaises(UnauthorizedLogin):
                yield checker.requestAvatarId(UsernamePassword(name, password))

    def test_admin_password_at_end_of_input(self):
        """Without a terminal (a new session has none), at end of input: one
        line and status 2, no traceback."""
        for given in ("", "only once\n"):
            done = subprocess.run([sys.executable, "-m", "relayd.cli", "admin-password", "ops"],
                                  cwd=REPO, input=given, capture_output=True, text=True,
                                  start_new_session=True, timeout=30)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn("relayd: no password given (end of input)\n", done.stderr)
            self.assertNotIn("Traceback", done.stderr)
            self.assertEqual(done.stdout, "")

    @defer.inlineCallbacks
    def test_an_unknown_user_costs_a_bcrypt_check_too(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("ops:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
        checked = []
        self.patch(bcrypt, "checkpw", lambda password, hashed: checked.append(hashed) or False)
        for name in (b"ops", b"nobody"):
            with self.assertRaises(UnauthorizedLogin):
                yield BcryptPasswords(path, reactor).requestAvatarId(UsernamePassword(name, b"x"))
        self.assertEqual(len(checked), 2)
        self.assertEqual(checked[1], BcryptPasswords.DECOY)
