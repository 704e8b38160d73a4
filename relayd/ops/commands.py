"""The admin console's commands: readable views of the live daemon.

Each command returns ``Text`` (a str shown as itself at the prompt, not as a
quoted repr) or a Deferred firing with one, so the same functions read well
in the interactive manhole and through ``relayd admin``.  A service that is
not enabled gives "<name>: service not enabled" instead of an exception.
"""
import inspect
import ipaddress

from twisted.internet import defer
from twisted.logger import Logger

from relayd.names import shown


class Text(str):
    """A string that the Python prompt prints without quotes."""

    def __repr__(self):
        return str(self)


def _cell(value):
    """One table cell; text from clients and peers is escaped (``names.shown``)."""
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple, set)):
        return ",".join(shown(v) for v in value) or "-"
    if value is None:
        return "-"
    return shown(value)


def table(rows, empty="(none)"):
    """Rows of dicts as aligned columns (columns in first-seen key order)."""
    if not rows:
        return Text(empty)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return Text("\n".join(lines))


def tree(value, indent=0):
    """A nested dict as indented ``key: value`` lines."""
    lines = []
    pad = "  " * indent
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{pad}{key}:")
            lines.append(tree(item, indent + 1))
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            lines.append(f"{pad}{key}:")
            lines.append("\n".join(pad + "  " + line for line in table(item).splitlines()))
        else:
            lines.append(f"{pad}{key}: {_cell(item)}")
    return Text("\n".join(lines))


class NotEnabled(Exception):
    """The command's service is not part of this daemon."""


class AdminCommands:
    """Commands bound to one daemon; ``namespace()`` is what the console sees."""

    log = Logger()
    COMMANDS = ("help", "stats", "clients", "rooms", "kick", "ban", "unban", "bans",
                "peers", "nodes", "locate", "udp_peers", "reservations", "circuits", "prune", "reload")

    def __init__(self, daemon):
        self.daemon = daemon

    def namespace(self):
        names = {name: self._guarded(getattr(self, name)) for name in self.COMMANDS}
        names["daemon"] = self.daemon
        return names

    @staticmethod
    def _guarded(command):
        def run(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except NotEnabled as e:
                return Text(f"{e}: service not enabled")
        run.__name__ = command.__name__
        run.__doc__ = command.__doc__
        return run

    def _attribute(self, name, service):
        part = getattr(self.daemon, name, None)
        if part is None:
            raise NotEnabled(service)
        return part

    def _service(self, name):
        try:
            return self.daemon.getServiceNamed(name)
        except KeyError:
            raise NotEnabled(name) from None

    def help(self):
        """List the admin commands."""
        lines = ["admin commands (the live daemon is `daemon`):"]
        for name in self.COMMANDS:
            command = getattr(self, name)
            summary = (command.__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name}{inspect.signature(command)}".ljust(28) + summary)
        return Text("\n".join(lines))

    def stats(self):
        """Uptime, identity and every service's statistics."""
        return tree(self.daemon.stats())

    def clients(self):
        """Connected clients of the message relay."""
        return table(self._attribute("router", "tcp").clients(), "no clients connected")

    def rooms(self):
        """Rooms and their members."""
        rooms = self._attribute("router", "tcp").rooms()
        if not rooms:
            return Text("no rooms")
        return Text("\n".join(f"{shown(room)} ({len(members)}): {', '.join(map(shown, members))}"
                              for room, members in sorted(rooms.items())))

    def kick(self, peer_id):
        """Disconnect the client with this id."""
        if self._attribute("router", "tcp").kick(peer_id):
            self.log.info("admin kicked client {peer_id}", peer_id=shown(peer_id))
            return Text(f"kicked {shown(peer_id)}")
        return Text(f"no client {shown(peer_id)} connected")

    def ban(self, ip, minutes=10):
        """Refuse an IP address for some minutes (default 10)."""
        guard = self._attribute("guard", "ratelimit")
        try:
            address = str(ipaddress.ip_address(ip))
            seconds = float(minutes) * 60
        except ValueError as e:
            return Text(f"not banned: {e}")
        if not seconds > 0:             # also refuses nan, a ban that would never end
            return Text("not banned: minutes must be positive")
        guard.ban(address, seconds)
        return Text(f"banned {address} for {seconds / 60:g} minutes")

    def unban(self, ip):
        """Lift a ban."""
        guard = self._attribute("guard", "ratelimit")
        try:
            ip = str(ipaddress.ip_address(ip))      # the form ban() stored
        except ValueError:
            pass
        if guard.unban(ip):
            return Text(f"unbanned {ip}")
        return Text(f"{ip} was not banned")

    def bans(self):
        """Current bans with the time left."""
        bans = self._attribute("guard", "ratelimit").bans()
        return table([{"ip": ip, "seconds_left": left} for ip, left in sorted(bans.items())],
                     "no bans")

    def peers(self):
        """Federation links and their state."""
        return table(self._service("federation").peers(), "no federation peers")

    def nodes(self):
        """Cluster nodes alive, with their sessions ([cluster])."""
        cluster = self._service("cluster")
        return table([{"node": node, "sessions": info.get("sessions"), "here": node == cluster.node}
                      for node, info in sorted(cluster.members.items())],
                     "no cluster node seen yet (engine %s)" % cluster.link.state)

    def locate(self, peer_id):
        """Which cluster node holds ``peer_id`` ([cluster]; returns a Deferred)."""
        d = self._service("cluster").locate(peer_id)
        d.addCallbacks(
            lambda node: Text(f"{peer_id} is connected to node {node}" if node is not None
                              else f"{peer_id} is not connected to any node"),
            lambda failure: Text(f"cannot tell: {failure.getErrorMessage()}"))
        return d

    def udp_peers(self):
        """Peers registered with the UDP rendezvous."""
        return table(self._service("udp").peers(), "no UDP peers")

    def reservations(self):
        """libp2p circuit-relay reservations."""
        return table(self._service("libp2p").reservations(), "no reservations")

    def circuits(self):
        """Open libp2p relayed circuits."""
        return table(self._service("libp2p").circuits(), "no circuits")

    def prune(self):
        """Drop journal segments past retention (returns a Deferred)."""
        d = defer.maybeDeferred(self._attribute("journal", "journal").prune)
        d.addCallback(lambda result: Text("pruned:\n" + tree(result, 1)))
        return d

    def reload(self):
        """Re-read the config file's reloadable parts."""
        return Text(self.daemon.reload())
