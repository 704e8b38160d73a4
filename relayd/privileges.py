"""Running as an unprivileged user with ``twistd --uid/--gid``.

twistd starts the services' privileged half as root (ports below 1024 are
bound, and the data directory, keys and journal are created then), drops to
the target user, then starts the rest.  ``hand_over`` gives the target user
what was created as root, before the drop; ``check_writable`` (after it)
refuses to run a relay that could not write its journal, with one clear line.
"""
import os
import pwd


class CannotRun(Exception):
    """The relay cannot work as the user it runs as."""


def target(parent_options):
    """``(uid, gid)`` from twistd's own ``--uid``/``--gid`` (gid defaults to the
    user's group), or None when twistd does not switch users."""
    if parent_options is None or parent_options.get("uid") is None:
        return None
    uid, gid = parent_options["uid"], parent_options.get("gid")
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


def state_paths(settings):
    """Where the relay keeps state: the data directory plus keys configured outside it."""
    paths = [settings.relay.data_dir]
    admin, tor = settings.get("admin"), settings.get("tor")
    if admin is not None and admin.host_key:
        paths += [admin.host_key, admin.host_key + ".pub"]
    if tor is not None and tor.onion_key:
        paths.append(tor.onion_key)
    return paths


def hand_over(settings, uid, gid):
    """Make every state file and directory owned by ``uid:gid`` (as root, before the drop)."""
    for path in state_paths(settings):
        if not os.path.lexists(path):
            continue
        os.chown(path, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def check_writable(settings):
    """Raise CannotRun unless this user can write the data directory and journal."""
    data_dir = settings.relay.data_dir
    for path in (data_dir, os.path.join(data_dir, "journal")):
        if not os.access(path, os.W_OK | os.X_OK):      # also when a parent cannot be crossed
            user = pwd.getpwuid(os.geteuid()).pw_name
            raise CannotRun(f"[relay] data_dir: {path} is not writable by user {user} "
                            f"(uid {os.geteuid()}); make it that user's "
                            f"(chown -R {user} {data_dir}) or start relayd as that user")
