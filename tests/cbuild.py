"""A check shared by the tests of relayd's C extensions."""
import shutil
import subprocess
import sysconfig

from twisted.trial import unittest


def assert_compiles_without_warnings(test, source):
    """Fail ``test`` if gcc warns about ``source`` with -Wall -Wextra (skip it without gcc)."""
    if shutil.which("gcc") is None:
        raise unittest.SkipTest("no gcc")
    done = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-fsyntax-only",
                           "-I" + sysconfig.get_paths()["include"], source],
                          capture_output=True, text=True, timeout=120)
    test.assertEqual(done.returncode, 0, done.stderr)
