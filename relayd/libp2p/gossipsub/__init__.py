"""GossipSub v1.1 (``/meshsub/1.1.0``, ``/meshsub/1.0.0``; libp2p/specs pubsub/gossipsub)."""
