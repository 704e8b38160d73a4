"""Kademlia DHT server (``/ipfs/kad/1.0.0``, libp2p/specs kad-dht)."""
