"""Error frames of the TCP protocol (codes are listed in docs/PROTOCOL.md)."""
import json

TEXT = {
    "bad_json": "a line is not a JSON object",
    "bad_utf8": "a line is not valid UTF-8",
}


def frame(code, text, **extra):
    """``{"status": "error", "error": code, "message": text, ...}`` as a line."""
    obj = {"status": "error", "error": code, "message": text}
    obj.update(extra)
    return json.dumps(obj).encode() + b"\n"
