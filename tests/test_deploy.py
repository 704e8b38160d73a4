"""Deployment: ``relayd init DIR`` (OPERATIONS.md's commands run verbatim),
the wheel carrying its template, and the systemd unit (systemd-analyze)."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

from twisted.trial.unittest import SynchronousTestCase

from relayd import config
from tests.daemon import REPO
from tests.doccommands import DocSandbox, shell_blocks

UNIT = os.path.join(REPO, "deploy", "systemd", "relayd.service")
RELAYD = [sys.executable, "-m", "relayd.cli"]


class InitTests(SynchronousTestCase):
    def test_the_documented_init_starts_a_relay(self):
        [[init, start, health]] = shell_blocks("docs/OPERATIONS.md",
                                               "A relay of its own: `relayd init`")
        sandbox = DocSandbox(self)
        code, output = sandbox.run(init)
        self.assertEqual(code, 0, output)
        self.assertIn("key = ", output)
        home = os.path.join(sandbox.dir, "relay-home")
        modes = {name: os.stat(os.path.join(home, name)).st_mode & 0o777
                 for name in ("http_token", "admin_keys", "data", "data/identity.key")}
        self.assertEqual(modes, {"http_token": 0o600, "admin_keys": 0o600, "data": 0o700,
                                 "data/identity.key": 0o600})
        relay = sandbox.start(start)
        sandbox.wait_output(relay, "SIGTERM stops")
        code, output = sandbox.run(health)
        self.assertEqual(json.loads(output)["status"], "ok", output)
        code, output = sandbox.run("curl -s -o /dev/null -w '%{http_code}' localhost:9001/metrics")
        self.assertEqual(output, "401", "the token guards every page")
        self.assertEqual(sandbox.stop(relay), 0, sandbox.output(relay))

    def test_init_overwrites_nothing(self):
        home = os.path.abspath(self.mktemp())
        done = subprocess.run(RELAYD + ["init", home, "--id", "relayZ"], capture_output=True,
                              text=True, cwd=REPO, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        settings = config.load(os.path.join(home, "relay.ini"))
        self.assertEqual((settings.relay.id, settings.relay.data_dir),
                         ("relayZ", os.path.join(home, "data")))
        with open(os.path.join(home, "http_token")) as f:
            token = f.read()
        again = subprocess.run(RELAYD + ["init", home], capture_output=True, text=True,
                               cwd=REPO, timeout=60)
        self.assertEqual(again.returncode, 2)
        self.assertIn("relay.ini exists: relayd init does not overwrite anything", again.stderr)
        with open(os.path.join(home, "http_token")) as f:
            self.assertEqual(f.read(), token)

    def test_the_wheel_carries_the_starter_config(self):
        """Built from the working tree's files as git lists them."""
        source = os.path.abspath(self.mktemp())
        listed = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard"],
                                capture_output=True, text=True, check=True).stdout.split("\n")
        for name in filter(None, listed):
            if os.path.isfile(os.path.join(REPO, name)):
                os.makedirs(os.path.dirname(os.path.join(source, name)), exist_ok=True)
                shutil.copy2(os.path.join(REPO, name), os.path.join(source, name))
        out = os.path.abspath(self.mktemp())
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--no-build-isolation", "-w", out, source],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        [wheel] = os.listdir(out)
        names = zipfile.ZipFile(os.path.join(out, wheel)).namelist()
        self.assertIn("relayd/starter.ini", names)
        self.assertIn("twisted/plugins/relayd_plugin.py", names)


class SystemdUnitTests(SynchronousTestCase):
    skip = None if shutil.which("systemd-analyze") else \
        "needs systemd-analyze (Debian package systemd)"

    def test_systemd_analyze_verifies_the_unit(self):
        """The shipped unit, with /opt/relayd (where OPERATIONS.md installs
        relayd) pointing at this virtualenv, since verify checks that
        ExecStart exists."""
        with open(UNIT) as f:
            unit = f.read()
        self.assertIn("\nUser=relayd\n", unit)
        self.assertIn("\nExecStart=/opt/relayd/bin/twistd --nodaemon --pidfile= relayd "
                      "--config /var/lib/relayd/relay.ini\n", unit)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "relayd.service")
        with open(path, "w") as f:
            f.write(unit.replace("/opt/relayd/", sys.prefix + "/"))
        done = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                              text=True, timeout=120)
        self.assertEqual((done.returncode, done.stdout + done.stderr), (0, ""))
