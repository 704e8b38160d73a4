"""docs/OPERATIONS.md §Cluster: the three-node cluster, its commands run verbatim."""
import signal

from twisted.trial.unittest import SynchronousTestCase

from tests.doccommands import DocSandbox, shell_blocks
from tests.engine import NATS_SERVER, engine_missing


class ClusterDocTests(SynchronousTestCase):
    def test_three_nodes_as_operations_md_runs_them(self):
        reason = engine_missing(NATS_SERVER)
        if reason:
            self.skipTest(reason)
        start, chat, node_down = shell_blocks("docs/OPERATIONS.md", "Running a three-node cluster")
        self.assertEqual(len(start), 6)
        [listen, send] = chat
        [send_while_down, listen_elsewhere] = node_down
        sandbox = DocSandbox(self)
        engines = [sandbox.start(command) for command in start[:3]]
        nodes = [sandbox.start(command) for command in start[3:]]
        for i, node in enumerate(nodes):
            sandbox.wait_output(node, "cluster node node%d: accepting messages" % (i + 1),
                                timeout=90)
        bob = sandbox.start(listen)
        sandbox.wait_output(bob, "connected as bob")
        code, output = sandbox.run(send)
        self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "across nodes")

        sandbox.stop(nodes[2], signal.SIGKILL)
        sandbox.stop(bob)
        code, output = sandbox.run(send_while_down)
        self.assertEqual(code, 0, output)
        bob = sandbox.start(listen_elsewhere)
        sandbox.wait_output(bob, "while node3 is down", timeout=30)
        sandbox.stop(bob)
        for node in nodes[:2]:
            self.assertEqual(sandbox.stop(node), 0, sandbox.output(node))
        for engine in engines:
            sandbox.stop(engine)
