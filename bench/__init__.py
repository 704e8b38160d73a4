"""Load generators that run the real relayd (and mosquitto as the reference).

``python -m bench`` (``make bench``) runs every benchmark listed in
``bench.__main__.BENCHMARKS``; each module also runs alone
(``python -m bench.tcp_fanout --help``).  Every figure is printed as one
``<bench> key=value ...`` line (see ``bench.report``).
"""
