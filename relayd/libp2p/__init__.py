"""libp2p Circuit Relay v2 over TCP: multistream-select, Noise, Yamux,
identify, ping and the hop/stop protocols, on Twisted."""
