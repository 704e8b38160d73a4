"""Generated secrets under etc/ are never committed by accident."""
import os
import shutil
import subprocess

from twisted.trial import unittest

from tests.daemon import REPO

SECRETS = ["etc/tls/ca.key", "etc/tls/relay1.key", "etc/tls/ca.pem",
           "etc/admin_keys", "etc/admin_passwords", "etc/http_token",
           "etc/federation/relay2.key"]
KEPT = ["etc/relay.ini", "etc/federation/relay1.ini"]


class GitIgnoreTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
            raise unittest.SkipTest("needs git and a git checkout of the repository")

    def ignored(self, path):
        return subprocess.run(["git", "check-ignore", "--no-index", "-q", path],
                              cwd=REPO).returncode == 0

    def test_generated_secrets_are_ignored(self):
        self.assertEqual([p for p in SECRETS if not self.ignored(p)], [])

    def test_sample_configuration_is_not_ignored(self):
        self.assertEqual([p for p in KEPT if self.ignored(p)], [])
