"""The bridge's only contact with the core router (one place to re-point
when the router becomes a pipeline with durable-event subscriptions).

- ``inject(entry)``: admit an entry made by the bridge as the relay's own
  (deduplicated, journaled, delivered, federated); fires True if it was new.
- ``subscribe(forwarder)``: ``forwarder.forward(entry, line, source)`` is
  called once each message is durable; ``source`` is None for messages
  that entered at this relay, and the federation link otherwise.
"""


class RouterAdapter:
    def __init__(self, router):
        self.router = router

    def inject(self, entry):
        return self.router.accept_remote(entry, None)

    def subscribe(self, forwarder):
        self.router.forwarders.append(forwarder)
