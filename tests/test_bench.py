"""Smoke tests of the load generators: each runs with tiny counts against
the real daemon (and mosquitto when installed) and prints parseable figures.
No timing is asserted: performance is measured by ``make bench``."""
import importlib
import os
import subprocess
import sys
import time

from twisted.trial import unittest

from bench import mosquitto
from bench.procstat import cpu_seconds
from bench.crashload import CrashLoad
from bench.__main__ import BENCHMARKS
from bench.report import parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(module, *args):
    """Run ``python -m <module> args``; the parsed ``(bench, fields)`` lines."""
    systems = "relayd,mosquitto,mosquitto-nodelay" if mosquitto.available() else "relayd"
    done = subprocess.run([sys.executable, "-m", module, "--systems", systems, *args],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=120)
    output = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        raise AssertionError(f"{module} exited with {done.returncode}:\n{output}")
    return [parse(line) for line in output.splitlines() if line.strip()]


def rows(lines, **match):
    return [f for _, f in lines if all(f.get(k) == v for k, v in match.items())]


class MqttCodecTests(unittest.TestCase):
    def test_remaining_length_is_a_base_128_varint(self):
        self.assertEqual(mosquitto.packet(0x30, b"x" * 127)[:2], b"\x30\x7f")
        self.assertEqual(mosquitto.packet(0x30, b"x" * 128)[:3], b"\x30\x80\x01")
        self.assertEqual(mosquitto.packet(0x30, b"x" * 16384)[:4], b"\x30\x80\x80\x01")

    def test_publish_is_qos0_with_topic_then_payload(self):
        self.assertEqual(mosquitto.publish(b"t", b"hi"), b"\x30\x05\x00\x01thi")


class CpuTimeTests(unittest.TestCase):
    def test_a_few_milliseconds_of_cpu_are_seen(self):
        """A span under one clock tick (10 ms) still gets its CPU time, as
        the short benchmark runs need: a server's figure per CPU-second."""
        if not os.path.exists("/proc/self/schedstat"):
            raise unittest.SkipTest("this kernel keeps no schedstat: CPU time is in 10 ms ticks")
        outer = time.process_time()
        before, own = cpu_seconds(os.getpid()), time.process_time()
        while time.process_time() - own < 0.003:
            pass
        spent = time.process_time() - own
        used = cpu_seconds(os.getpid()) - before
        outer = time.process_time() - outer     # also the two reads, as ``used`` counts them
        self.assertGreater(used, 0.8 * spent)
        self.assertLess(used, outer + 0.002)


class CrashLoadBookkeepingTests(unittest.TestCase):
    def test_an_acked_message_is_lost_until_its_recipient_gets_it(self):
        load = CrashLoad()
        load.was_acked("m1", "away0")
        load.got("away1", "m1")             # someone else's copy does not count
        self.assertEqual(load.lost(), {"m1": "away0"})
        load.got("away0", "m1")
        self.assertEqual(load.lost(), {})

    def test_a_message_received_before_its_ack_is_not_lost(self):
        load = CrashLoad()
        load.got("reader0", "m1")
        load.was_acked("m1", "reader0")
        self.assertEqual(load.lost(), {})


class BenchmarkTests(unittest.TestCase):
    def test_every_listed_benchmark_has_main(self):
        for name, _, _ in BENCHMARKS:
            self.assertTrue(callable(importlib.import_module(name).main), name)

    def assertBothSystems(self, found, key):
        self.assertGreaterEqual(len(rows(found, system="relayd")), 1)
        for system in ("relayd", "mosquitto", "mosquitto-nodelay"):
            for fields in rows(found, system=system):
                self.assertIn(key, fields)
                float(fields[key])
        if mosquitto.available():
            [check] = rows(found, check=f"relayd/mosquitto_{key}")
            self.assertIn(check["against"], ("mosquitto", "mosquitto-nodelay"))

    def test_fanout_counts_every_copy(self):
        found = run_bench("bench.tcp_fanout", "--receivers", "3", "--seconds", "0.3",
                          "--warmup", "0.1", "--window", "20", "--repeat", "2")
        self.assertBothSystems(found, "delivered_per_s")
        self.assertEqual(len(rows(found, system="relayd", run="median")), 1)
        for fields in rows(found, receivers="3"):
            if "lost" in fields:
                self.assertEqual(fields["lost"], "0")
                self.assertGreater(float(fields["delivered_per_s"]), 0)

    def test_latency_reports_percentiles(self):
        found = run_bench("bench.tcp_latency", "--receivers", "2", "--rate", "200",
                          "--seconds", "0.3", "--warmup", "0.1", "--repeat", "1")
        self.assertBothSystems(found, "p99_ms")
        for fields in rows(found):
            if "copies" in fields:
                self.assertGreater(int(fields["copies"]), 0)
                self.assertEqual(fields["lost"], "0")

    def test_idle_connections_reports_bytes_per_connection(self):
        found = run_bench("bench.idle_connections", "--connections", "50")
        self.assertBothSystems(found, "bytes_per_connection")


class RestartBenchTests(unittest.TestCase):
    def test_restart_prints_each_step(self):
        done = subprocess.run([sys.executable, "-m", "bench.restart", "--size", "2MiB",
                               "--tail", "256KiB", "--cold"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=120)
        output = done.stdout.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, output)
        found = [parse(line) for line in output.splitlines() if line.startswith("restart ")]
        steps = [fields["step"] for _, fields in found]
        self.assertEqual(steps, ["build", "first_start_full_replay", "after_sigterm",
                                 "after_crash"])
        for _, fields in found[1:]:
            self.assertGreater(float(fields["serving_s"]), 0)
