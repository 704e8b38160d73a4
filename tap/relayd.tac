"""relayd for ``twistd -ny tap/relayd.tac``.

The config file is taken from $RELAYD_CONFIG (default etc/relay.ini).
"""
import os

from twisted.application import service
from twisted.internet import reactor

from relayd import config
from relayd.daemon import build

path = os.environ.get("RELAYD_CONFIG", "etc/relay.ini")
application = service.Application("relayd")
build(config.load(path), reactor, config_path=path).setServiceParent(application)
