"""``python -m relayd.federation.keys CONFIG...``: keys for a small federation.

For each relay config: create the relay's Ed25519 identity in its data
directory if it has none (the daemon would create the same file on first
start) and write the public key, base64, to ``<data_dir>/identity.pub``,
which a peer's ``[peer:NAME] key_file`` can point at.  A relay with
``[federation]`` rewrites that file at every start.  Prints each relay's
id, fingerprint and key, ready to paste as ``key =`` in a peer's config.
"""
import os
import sys

from relayd import config
from relayd.filepool import write_atomically
from relayd.identity import KEY_FILE, Identity, load_or_create

PUBLIC_FILE = "identity.pub"


def write_public(data_dir, identity):
    """Write ``<data_dir>/identity.pub`` (base64 public key); returns its path."""
    public = os.path.join(data_dir, PUBLIC_FILE)
    write_atomically(public, (identity.public_b64 + "\n").encode("ascii"))
    return public


def export(settings):
    """Create (or load) the identity of ``settings``; returns (Identity, .pub path)."""
    data_dir = settings.relay.data_dir
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    key, _ = load_or_create(os.path.join(data_dir, KEY_FILE))
    identity = Identity(settings.relay.id, key)
    return identity, write_public(data_dir, identity)


def main(argv=None, out=None):
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    if not argv:
        print("usage: python -m relayd.federation.keys CONFIG...", file=sys.stderr)
        return 2
    for path in argv:
        try:
            settings = config.load(path)
        except config.ConfigError as e:
            print(e, file=sys.stderr)
            return 1
        identity, public = export(settings)
        print(f"{settings.relay.id}: {identity.fingerprint}\n  key = {identity.public_b64}\n"
              f"  written to {public}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
