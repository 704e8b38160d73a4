"""``python -m relayd.client`` is ``relay-chat``."""
from relayd.client.cli import main

main()
