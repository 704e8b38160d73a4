"""The interactive relay-chat console: stdin lines in, messages and status out.

It is the protocol given to ``twisted.internet.stdio.StandardIO``; every
line it shows goes through its transport (stdout), status lines start with
``***``.  End of input (or ``/quit``) waits until every message typed has
been acked and every query answered, then calls ``on_done(0)``.

``/peer NAME`` talks to NAME end to end over UDP instead (``relay-chat
peer``), through ``open_peer(name, show)``: a Deferred of a started
``(PeerClient, port)``, given by whoever has the UDP relay's address.
"""
import fcntl

from zope.interface import implementer

from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver

from relayd.client.protocol import ServerError
from relayd.client.render import clean, message_line, rooms_lines
from relayd.client.session import MessageTooLong

HELP = """\
commands:
  /to NAME [text]       talk to peer NAME (* for everyone) from now on; send text if given
  /room ROOM [text]     talk to room ROOM from now on (without joining it)
  /peer NAME            talk to NAME end to end over UDP (direct or via the relay)
  /join ROOM            join ROOM and talk to it; you stay a member (its messages
                        kept for you while offline) until /leave
  /leave [ROOM]         leave ROOM (default: the current room)
  /peers                who is connected
  /rooms                rooms and their member counts
  /history [TARGET] [N] last N messages of a room (#name) or with a peer (default: current target)
  /quit                 leave once every message is acked (also: end of input)
  a plain line goes to the current target; //text sends "/text\""""


def room_name(text):
    return text[1:] if text.startswith("#") else text


@implementer(IHalfCloseableProtocol)
class Console(LineReceiver):
    delimiter = b"\n"

    def __init__(self, session, on_done, open_peer=None):
        self.session = session
        self.on_done = on_done
        self.open_peer = open_peer
        self.target = None              # ("to", peer), ("room", name) or ("peer", name)
        self.peer = None                # (PeerClient, UDP port) of /peer, once open
        self.quitting = False
        self._asking = set()            # queries not answered yet

    def connectionMade(self):
        self.status("type /help for commands")

    # -- output ---------------------------------------------------------

    def show(self, text):
        if self.transport is not None:
            self.transport.write(text.encode("utf-8", "replace") + b"\n")

    def status(self, text):
        self.show("*** " + text)

    def show_message(self, msg):
        self.show(message_line(msg))

    # -- input ----------------------------------------------------------

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        if text.startswith("//"):
            self.say(text[1:])
        elif text.startswith("/"):
            command, _, rest = text[1:].partition(" ")
            handler = getattr(self, "cmd_" + command.lower(), None)
            if handler is None:
                self.status(f"unknown command /{clean(command)}; /help lists them")
            else:
                handler(rest.strip())
        else:
            self.say(text)

    def readConnectionLost(self):
        self.quit()

    def writeConnectionLost(self):
        self.finish()

    def connectionLost(self, reason):
        self.finish()

    # -- commands -------------------------------------------------------

    def cmd_help(self, rest):
        for line in HELP.splitlines():
            self.status(line)

    def cmd_to(self, rest):
        self._retarget("to", rest)

    def cmd_room(self, rest):
        self._retarget("room", rest)

    def cmd_peer(self, rest):
        name = rest.split()[0] if rest else ""
        if not name:
            return self.status("usage: /peer NAME")
        if self.open_peer is None:
            return self.status("no UDP relay for peer chat (relay-chat chat --udp-relay HOST:PORT)")
        self.target = ("peer", name)
        if self.peer is not None and self.peer[0].target == name:
            return self.status(f"talking to {clean(name)} over UDP")
        self.close_peer()
        self.status(f"talking to {clean(name)} end to end over UDP; /to or /room to leave")
        self._ask(self.open_peer(name, self.show), self._peer_opened)

    def _peer_opened(self, peer):
        client, port = peer
        if self.peer is not None or self.quitting or self.target != ("peer", client.target):
            port.stopListening()        # another /peer (or /quit) came first
            return
        self.peer = peer
        client.failed.addCallback(self._peer_refused, peer)

    def _peer_refused(self, why, peer):
        self.status(why)
        if self.peer is peer:
            self.close_peer()

    def close_peer(self):
        """Stop the /peer conversation, if any (a Deferred when there was one)."""
        peer, self.peer = self.peer, None
        return None if peer is None else peer[1].stopListening()

    def cmd_join(self, rest):
        if not rest:
            return self.status("usage: /join ROOM")
        room = room_name(rest.split()[0])
        self.target = ("room", room)
        self._ask(self.session.join(room, persist=True), lambda r: self.status(
            f"joined #{clean(room)}; members: {', '.join(map(clean, r.get('members', [])))}"))

    def cmd_leave(self, rest):
        room = room_name(rest.split()[0]) if rest else (
            self.target[1] if self.target and self.target[0] == "room" else None)
        if room is None:
            return self.status("usage: /leave ROOM (no current room)")
        if self.target == ("room", room):
            self.target = None
        self._ask(self.session.leave(room), lambda r: self.status(f"left #{clean(room)}"))

    def cmd_peers(self, rest):
        self._ask(self.session.request({"type": "peers"}), lambda r: self.status(
            "peers: " + (", ".join(map(clean, r.get("peers", []))) or "(none)")))

    def cmd_rooms(self, rest):
        def show(r):
            lines = rooms_lines(r.get("rooms", {}))
            self.status("rooms: " + ("; ".join(lines) if lines else "(none)"))
        self._ask(self.session.request({"type": "rooms"}), show)

    def cmd_history(self, rest):
        words = rest.split()
        limit = None
        if words and words[-1].isdigit():
            limit = int(words.pop())
        if words:
            target = ("room", room_name(words[0])) if words[0].startswith("#") else ("to", words[0])
        else:
            target = self.target
        if target is None:
            return self.status("usage: /history #ROOM|PEER [N]")
        request = {"type": "history"}
        request["room" if target[0] == "room" else "with"] = target[1]
        if limit is not None:
            request["limit"] = limit

        def show(r):
            messages = r.get("messages", [])
            self.status(f"history: {len(messages)} message(s)")
            for msg in messages:
                self.show_message(msg)
        self._ask(self.session.request(request), show)

    def cmd_quit(self, rest):
        self.quit()

    # -- helpers --------------------------------------------------------

    def _retarget(self, kind, rest):
        name, _, text = rest.partition(" ")
        if not name:
            return self.status(f"usage: /{kind} NAME [text]")
        if name.startswith("#"):
            kind = "room"                   # /to #general means the room
        self.target = (kind, room_name(name) if kind == "room" else name)
        self.status(f"talking to {self._target_label()}")
        if text.strip():
            self.say(text)

    def _target_label(self):
        kind, name = self.target
        return clean("#" + name if kind == "room" else name)

    def say(self, text):
        if self.target is None:
            return self.status("no target yet: /to NAME, /room ROOM or /join ROOM")
        kind, name = self.target
        if kind == "peer":
            if self.peer is None:
                return self.status(f"not connected to {clean(name)} yet; message not sent")
            return self.peer[0].send_text(text)
        d = self.session.send(text, **{kind: name})
        if self.session.protocol is None:
            self.status("not connected: the message is queued")
        d.addErrback(self._not_sent)

    def _not_sent(self, failure):
        if failure.check(ServerError, MessageTooLong):
            self.status(f"not sent: {failure.value}")
        elif not self.quitting:
            self.status(f"not sent: {failure.getErrorMessage()}")

    def _ask(self, d, show):
        def failed(failure):
            if not self.quitting:
                self.status(f"failed: {failure.value}")
        self._asking.add(d)
        d.addCallbacks(show, failed).addBoth(lambda _: self._asking.discard(d))

    def quit(self):
        if self.quitting:
            return
        self.quitting = True
        if self.session.unacked:
            self.status(f"waiting for {self.session.unacked} unacked message(s); "
                        "Ctrl-C to give up")
        DeferredList([self.session.drained()] + list(self._asking)).addCallback(
            lambda _: self.finish())

    def finish(self):
        self.close_peer()
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done(0)


def restore_at_exit(reactor, fds):
    """Give ``fds`` their file status flags back once the reactor has stopped.

    StandardIO makes stdin and stdout non-blocking, and a terminal shares
    those flags with the shell that started us.
    """
    saved = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in fds}

    def restore():
        for fd, flags in saved.items():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass
    reactor.addSystemEventTrigger("after", "shutdown", restore)
