"""UDP rendezvous (seed 001): discovery, keepalive, hole punching, relay fallback, STUN."""
