"""Operations: the SSH admin console, HTTP monitoring, periodic statistics
and the Tor onion service, each switched on by its ini section."""


def build_ops(daemon):
    """Add the ``[admin]``, ``[http]`` and ``[tor]`` services the settings enable."""
    settings = daemon.settings
    if settings.enabled("admin"):
        from relayd.ops.manhole import ManholeService
        ManholeService(daemon, settings.admin).setServiceParent(daemon)
    if settings.enabled("http"):
        from relayd.ops.http import MonitorService
        MonitorService(daemon, settings.http).setServiceParent(daemon)
    if settings.enabled("tor"):
        from relayd.tor import OnionService
        OnionService(daemon, settings).setServiceParent(daemon)
