"""twistd plugin for relayd: only the ServiceMaker, so an import error elsewhere
still shows a real traceback instead of "Unknown command"."""
from twisted.application.service import ServiceMaker

relayd = ServiceMaker(
    "relayd",
    "relayd.tap",
    "Relay daemon for peer-to-peer chat networks.",
    "relayd",
)
