"""Operations: the SSH admin console, HTTP monitoring, periodic statistics
and the Tor onion service, each switched on by its ini section."""


def ops_service(daemon, name):
    """The service of the ``[admin]``, ``[http]`` or ``[tor]`` section (not yet attached)."""
    settings = daemon.settings
    if name == "admin":
        from relayd.ops.manhole import ManholeService
        return ManholeService(daemon, settings.admin)
    if name == "http":
        from relayd.ops.http import MonitorService
        return MonitorService(daemon, settings.http)
    from relayd.tor import OnionService
    return OnionService(daemon, settings)


def build_ops(daemon):
    """Add the ``[admin]``, ``[http]`` and ``[tor]`` services the settings enable."""
    for name in ("admin", "http", "tor"):
        if daemon.settings.enabled(name):
            ops_service(daemon, name).setServiceParent(daemon)
