"""relayd as the server under test: ``twistd -n relayd`` with a bench config."""
import json
import os
import sys

from bench.server import HOST, Server, ServerError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The rate limit is raised (the default is seed 000's 10 messages / 10 s per
# IP) and so are the connection caps; everything else, the journal with
# fsync = batch included, stays as shipped.
CONFIG = """\
[relay]
id = bench
data_dir = {data_dir}

[tcp]
listen = tcp:{port}:interface={host}:backlog=1024
max_connections = 19000
max_connections_per_ip = 19000

[ratelimit]
messages = 100000000
per_seconds = 1

[journal]
fsync = batch
"""


_BODY_KEY = b'"body": "'


class Relayd(Server):
    name = "relayd"
    COUNTS_LINES = True
    ACKS = True

    def command(self):
        config = self.write_config("relay.ini", CONFIG.format(
            data_dir=os.path.join(self.workdir, "var"), port=self.port, host=HOST))
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                "--logfile", os.path.join(self.workdir, "twistd.log"),
                "relayd", "--config", config]

    def cwd(self):
        return REPO

    def env(self):
        path = os.environ.get("PYTHONPATH")
        return dict(os.environ, PYTHONPATH=REPO + (os.pathsep + path if path else ""))

    def log(self):
        text = super().log()
        try:
            with open(os.path.join(self.workdir, "twistd.log"), errors="replace") as f:
                text += f.read()[-4000:]
        except OSError:
            pass
        return text

    # --- the JSON-lines protocol (docs/PROTOCOL.md) --------------------------------

    def greeting(self, name, subscribe):
        # Every identified session receives broadcasts: nothing to subscribe.
        return json.dumps({"type": "hello", "id": name}).encode() + b"\n"

    def greeted(self, data, subscribe):
        if not data.endswith(b"\n"):
            return False
        answer = json.loads(data)
        if answer.get("type") != "welcome":
            raise ServerError(f"relayd refused hello: {answer}")
        return True

    def frame(self, body):
        return b'{"type": "send", "to": "*", "body": "' + body + b'"}\n'

    def bodies(self, buffer, body_len):
        """The body of each complete line, sliced after its key: the
        generator's bodies are ASCII without escapes, so a copy costs the
        generator a slice, as a fixed-size MQTT frame does, instead of a JSON
        parse that would delay its reading of the next receiver's socket."""
        *lines, rest = buffer.split(b"\n")
        found = []
        for line in lines:
            at = line.find(_BODY_KEY)
            if at < 0:
                raise ServerError(f"relayd sent a receiver a line without a body: {line[:200]!r}")
            at += len(_BODY_KEY)
            found.append(line[at:at + body_len])
        return found, rest
