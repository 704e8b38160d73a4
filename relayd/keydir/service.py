"""Wiring of the key directory into a daemon (after tcp and federation)."""
import os

from relayd.keydir.directory import FILE_NAME, KeyDirectory
from relayd.keydir.remote import RemoteKeys
from relayd.keydir.requests import EncryptionPolicy, KeyRequests


def build_keydir(daemon, tcp):
    """Add the directory to ``daemon`` and its requests to the ``tcp`` service."""
    s = daemon.settings
    directory = KeyDirectory(os.path.join(s.relay.data_dir, FILE_NAME), daemon.file_pool,
                             daemon.router.ownership, s.relay.id, s.e2ee.max_prekeys)
    directory.setName("e2ee")
    directory.setServiceParent(daemon)
    federation = getattr(daemon, "federation", None)
    remote = None
    if federation is not None:
        remote = RemoteKeys(federation.hub, directory, daemon.reactor, s.e2ee.fetch_timeout)
    tcp.requests.update(KeyRequests(directory, remote).handlers())
    policy = EncryptionPolicy(directory, s.e2ee.require_encryption)
    tcp.send_checks.append(policy)
    daemon.on_reload(lambda new: setattr(policy, "required", new.e2ee.require_encryption))
    daemon.keydir = directory
    return directory
