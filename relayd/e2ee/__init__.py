"""End-to-end encryption for relay-chat over the TCP relay (docs/E2EE.md).

``wire``: formats both ends share (prekey signatures, envelopes, padding);
``seal``: HPKE direct messages and room messages; ``store``: the client's
keys and pins; ``layer``: the client side over a ``Session``; ``commands``:
relay-chat's subcommands and wiring.
"""
