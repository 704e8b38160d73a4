"""Federation: authenticated relay-to-relay links that flood messages and
delivery receipts with dedup, and catch up over the journal after outages.

``peers`` reads the peer list, ``handshake`` authenticates a link,
``index`` keeps per-origin sequence cursors, ``catchup`` reads the journal
for a peer, ``link`` is the wire protocol, ``hub`` forwards and dedups,
``metrics`` counts per peer, ``service`` keeps one outbound link per peer
plus the inbound listener, and ``keys`` is the command that prepares keys
for a small federation.
"""
