"""relayd: a relay daemon for peer-to-peer chat networks."""
__version__ = "0.1.0"
