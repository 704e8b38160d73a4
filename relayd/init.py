"""``relayd init DIR``: a starter configuration and its keys in a new directory.

DIR gets ``relay.ini`` (from the ``starter.ini`` template, with absolute
paths so the daemon can start from any directory), ``http_token`` (the
bearer token of ``/metrics``), an empty ``admin_keys`` and the data
directory ``data/`` holding the relay's identity key.  Secrets are mode
0600; nothing that exists is overwritten.
"""
import os
import secrets
from importlib import resources

from relayd.identity import KEY_FILE, Identity, load_or_create


class InitError(Exception):
    """Why the directory was not initialised."""


def _write_new(path, text, mode):
    """Create ``path`` with ``text``; fails if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def init(directory, relay_id):
    """Write the starter files into ``directory``; returns a dict of what was
    written (paths, and the relay's identity for federation peers)."""
    directory = os.path.abspath(directory)
    paths = {key: os.path.join(directory, name) for key, name in (
        ("config", "relay.ini"), ("token_file", "http_token"), ("admin_keys", "admin_keys"),
        ("data_dir", "data"))}
    present = [p for p in paths.values() if os.path.exists(p)]
    if present:
        raise InitError(f"{present[0]} exists: relayd init does not overwrite anything")
    os.makedirs(directory, mode=0o750, exist_ok=True)
    os.makedirs(paths["data_dir"], mode=0o700)
    template = resources.files("relayd").joinpath("starter.ini").read_text(encoding="utf-8")
    _write_new(paths["token_file"], secrets.token_urlsafe(32) + "\n", 0o600)
    _write_new(paths["admin_keys"], "", 0o600)
    _write_new(paths["config"], template.format(relay_id=relay_id, **paths), 0o640)
    key, _ = load_or_create(os.path.join(paths["data_dir"], KEY_FILE))
    identity = Identity(relay_id, key)
    return dict(paths, fingerprint=identity.fingerprint, public_key=identity.public_b64)
