"""Memory per idle connection: open many greeted, silent connections and
divide the server's resident-memory growth by their number.

    python -m bench.idle_connections [--connections 10000]

The generator holds one descriptor per connection, as does the server; both
raise RLIMIT_NOFILE to its hard limit (20,000 on the reference machine).
"""
from bench import loadgen, systems
from bench.procstat import raise_fd_limit

TARGET_BYTES = 2048


def main(argv=None):
    p = systems.parser(__doc__, systems="relayd,mosquitto")
    p.add_argument("--connections", type=int, default=10000)
    args = p.parse_args(argv)
    limit = raise_fd_limit()
    if args.connections + 100 > limit:
        p.error(f"--connections {args.connections} does not fit the open-file limit {limit}")
    results = systems.each("idle_connections", args,
                           lambda server: loadgen.idle(server, args.connections))
    if "relayd" in results:
        systems.check("idle_connections", "relayd_bytes_per_connection",
                      results["relayd"]["bytes_per_connection"], TARGET_BYTES, higher_is_better=False)
    systems.compare("idle_connections", results, "bytes_per_connection", 1.0, higher_is_better=False)


if __name__ == "__main__":
    main()
