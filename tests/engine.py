"""Real engine servers for cluster tests and benchmarks, on free loopback ports.

``NatsCluster(workdir, nodes=3)`` writes one nats-server config per node
(JetStream on, routes to the others) and starts them; ``kill(i)`` is a
kill -9 of one node, ``urls`` the client URLs.  ``RedisPair`` is a Redis 7
primary with one replica (the spike's reference).
"""
import os
import shutil
import signal
import subprocess
import time

from twisted.trial.unittest import SkipTest

from tests.daemon import free_port, wait_for_port

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

NATS_CONFIG = """\
server_name: {name}
listen: 127.0.0.1:{port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
"""
NATS_CLUSTER = """\
cluster {{
  name: relayd
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
"""


def engine_missing(server):
    """The reason a test must skip if ``server`` is not installed, else None."""
    if not os.access(server, os.X_OK):
        return f"{os.path.basename(server)} is not installed (tests/debian-packages.txt)"
    return None


def nats_engine(testcase, nodes=3):
    """A running nats-server JetStream cluster of ``nodes`` for ``testcase``
    (stopped in its cleanup); the test skips if nats-server is missing."""
    reason = engine_missing(NATS_SERVER)
    if reason:
        raise SkipTest(reason)
    engine = NatsCluster(testcase.mktemp(), nodes).start()
    testcase.addCleanup(engine.stop)
    return engine


class NatsCluster:
    """A JetStream cluster of ``nodes`` nats-server processes."""

    def __init__(self, workdir, nodes=3):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.ports = [free_port() for _ in range(nodes)]
        self.routes = [free_port() for _ in range(nodes)]
        self.processes = [None] * nodes
        self.urls = ["nats://127.0.0.1:%d" % port for port in self.ports]

    def config(self, i):
        path = os.path.join(self.workdir, "nats-%d.conf" % i)
        routes = ", ".join("nats-route://127.0.0.1:%d" % route
                           for j, route in enumerate(self.routes) if j != i)
        text = NATS_CONFIG + (NATS_CLUSTER if len(self.ports) > 1 else "")
        with open(path, "w") as f:
            f.write(text.format(name="n%d" % i, port=self.ports[i], route=self.routes[i],
                                store=os.path.join(self.workdir, "store-%d" % i), routes=routes))
        return path

    def start(self, i=None, timeout=20.0):
        for n in range(len(self.ports)) if i is None else [i]:
            log = open(os.path.join(self.workdir, "nats-%d.log" % n), "ab")
            self.processes[n] = subprocess.Popen([NATS_SERVER, "-c", self.config(n)],
                                                 stdout=log, stderr=subprocess.STDOUT)
            log.close()
        for n in range(len(self.ports)) if i is None else [i]:
            if not wait_for_port(self.ports[n], timeout, process=self.processes[n]):
                raise AssertionError("nats-server %d did not start:\n%s" % (n, self.log(n)))
        return self

    def log(self, i):
        with open(os.path.join(self.workdir, "nats-%d.log" % i), errors="replace") as f:
            return f.read()

    def kill(self, i):
        """kill -9 of node ``i``."""
        process, self.processes[i] = self.processes[i], None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def stop(self):
        for i, process in enumerate(self.processes):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.processes[i] = None


class RedisPair:
    """A Redis primary and one replica, without persistence to disk."""

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.ports = [free_port(), free_port()]
        self.processes = []

    def start(self, timeout=20.0):
        primary = self.ports[0]
        for i, port in enumerate(self.ports):
            args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self.workdir]
            if i:
                args += ["--replicaof", "127.0.0.1", str(primary)]
            log = open(os.path.join(self.workdir, "redis-%d.log" % i), "ab")
            self.processes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for port, process in zip(self.ports, self.processes):
            if not wait_for_port(port, timeout, process=process):
                raise AssertionError("redis-server on %d did not start" % port)
        time.sleep(0.5)         # the replica's first sync
        return self

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        self.processes = []
