"""How relay-chat shows messages and answers to people."""
import datetime

from relayd.e2ee import wire


def clean(text):
    """``text`` with control characters escaped, so a peer cannot drive the terminal."""
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def clock(timestamp):
    """Local ``HH:MM:SS`` of a message timestamp."""
    try:
        return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--:--"


def message_line(msg):
    """``[12:00:01] alice -> #general: text``; a body still encrypted (one
    this client cannot or may no longer open) is shown as a short tag."""
    body = msg.get("body", "")
    if wire.is_encrypted(body):
        body = "[end-to-end encrypted " + body[len(wire.PREFIX):].partition(" ")[0][:8] + "]"
    return (f"[{clock(msg.get('timestamp'))}] {clean(msg.get('from', '?'))} -> "
            f"{clean(msg.get('to', '?'))}: {clean(body)}")


def rooms_lines(rooms):
    """``general 2`` per room (name, member count), by name."""
    return [f"{clean(name)} {count}" for name, count in sorted(rooms.items())]
