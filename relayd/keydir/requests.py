"""The key directory's requests on the TCP relay (PROTOCOL.md, "Key directory").

Each handler takes ``(protocol, request, req)`` like the protocol's own; the
TCP service looks request types up here after its own.  ``EncryptionPolicy``
is the ``[e2ee] require_encryption`` check on direct messages.
"""
from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger

from relayd.core.message import valid_peer_id
from relayd.e2ee import wire
from relayd.keydir.directory import NotOwned

log = Logger()


class KeyRequests:
    def __init__(self, directory, remote=None):
        self.directory = directory
        self.remote = remote            # RemoteKeys when federation is on

    def handlers(self):
        return {"keys_publish": self.publish, "keys_fetch": self.fetch,
                "keys_status": self.status}

    def publish(self, protocol, request, req):
        if not protocol.authenticated:
            protocol.error("key_required", "publish keys from a session that proved its id "
                           "with a key", req=req)
            return
        try:
            count = self.directory.publish(protocol.peer_id, request.get("spk"),
                                           request.get("opks", []))
        except NotOwned:
            protocol.error("key_required", "this id is not owned by a key", req=req)
            return
        except wire.BadEnvelope as e:
            protocol.error("bad_keys", str(e), req=req)
            return
        protocol.send({"status": "ok", "type": "keys_published", "opks": count}, req)

    def status(self, protocol, request, req):
        protocol.send(dict(self.directory.status(protocol.peer_id), status="ok",
                           type="keys_status"), req)

    def fetch(self, protocol, request, req):
        peer_id = request.get("id")
        reason = valid_peer_id(peer_id)
        if reason is not None:
            protocol.error("bad_request", reason, field="id", req=req)
            return
        # One-time prekeys go only to sessions that proved a key (only those
        # can sign a message), and each costs a message of the address's rate
        # limit, so nobody drains a peer's supply fast.
        take = request.get("opk", True) is not False and protocol.authenticated
        if take:
            wait = protocol.service.guard.allow(protocol.address[0])
            if wait is not None:
                protocol.error("rate_limited", "too many key fetches; slow down", req=req,
                               retry_after=round(wait, 3))
                return
        record = self.directory.fetch(peer_id, take)
        if record is not None or self.remote is None:
            d = succeed(record)
        else:
            d = maybeDeferred(self.remote.fetch, peer_id, take)
        d.addCallback(self._answer, protocol, peer_id, req)
        d.addErrback(lambda f: log.failure("key fetch for {peer} failed", f, peer=peer_id))

    @staticmethod
    def _answer(record, protocol, peer_id, req):
        if record is None:
            protocol.error("no_keys", f"{peer_id} has published no encryption keys", req=req)
        else:
            protocol.send(dict(record, status="ok", type="keys"), req)


class EncryptionPolicy:
    """Refuses a plaintext direct message from an id owned by a key (it can
    sign) to an id that published encryption keys here, when ``[e2ee]
    require_encryption`` is on."""

    def __init__(self, directory, required):
        self.directory = directory
        self.required = required

    def __call__(self, sender, to, body):
        if (self.required and not to.startswith("#") and to != "*"
                and not wire.is_encrypted(body)
                and self.directory.ownership.owner(sender) is not None
                and self.directory.keyed(to)):
            return ("encryption_required", f"{to} has published encryption keys and your id is "
                    "owned by a key: this relay accepts only end-to-end encrypted direct "
                    "messages between such ids")
        return None
