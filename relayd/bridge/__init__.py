"""Bridges between relayd rooms and other networks' rooms."""
