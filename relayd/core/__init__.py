"""The routing core: plain Python with an injected clock and no I/O."""
