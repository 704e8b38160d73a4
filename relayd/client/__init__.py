"""relay-chat: the command-line client of relayd, and a reusable client protocol."""
