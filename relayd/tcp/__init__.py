"""The TCP message relay: seed-000 legacy framing and JSON lines."""
