"""Federation: authenticated relay-to-relay links that flood messages and
delivery receipts with dedup, and catch up over the journal after outages.

``peers`` reads the peer list, ``handshake`` authenticates a link,
``index`` keeps per-origin sequence cursors, ``catchup`` serves a peer
what it missed from the journal, ``link`` is the wire protocol, ``frames``
checks and encodes items, ``hub`` forwards and dedups,
``metrics`` counts per peer, ``service`` keeps one outbound link per peer
plus the inbound listener, and ``keys`` is the command that prepares keys
for a small federation.
"""
