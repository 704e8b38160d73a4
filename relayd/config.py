"""relay.ini -> typed, validated settings.

Every error names ``[section] key`` and says why, so that twistd can stop
before anything listens.  A service is switched on by the presence of its
section; keys left out take the defaults declared in ``SCHEMA``.
"""
import configparser
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import getPlugins

from relayd import names
from relayd.libp2p.multiaddr import multiaddr_list


class ConfigError(Exception):
    """A config problem; the message names the file, section and key."""


def _fail(why):
    raise ValueError(why)


# --- value converters: str -> value, raising ValueError(reason) ---------------

def string(text):
    if not text:
        _fail("must not be empty")
    return text


def name(text):
    """A relay name: the rule of ``relayd.names`` (printable, NFC, bounded)."""
    reason = names.problem(text, "a relay name")
    if reason is not None:
        _fail(reason)
    return text


def optional_string(text):
    return text or None


def integer(lo=None, hi=None):
    def convert(text):
        try:
            value = int(text, 0)
        except ValueError:
            _fail(f"{text!r} is not a whole number")
        if lo is not None and value < lo:
            _fail(f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            _fail(f"{value} is above the maximum {hi}")
        return value
    return convert


def number(lo=None):
    def convert(text):
        try:
            value = float(text)
        except ValueError:
            _fail(f"{text!r} is not a number")
        if lo is not None and value < lo:
            _fail(f"{value} is below the minimum {lo}")
        return value
    return convert


_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True,
             "0": False, "no": False, "false": False, "off": False}


def boolean(text):
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        _fail(f"{text!r} is not a boolean (yes/no, true/false, on/off, 1/0)")


_DURATION_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text):
    """``300``, ``10s``, ``5m``, ``2h``, ``7d`` -> seconds (float)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        _fail(f"{text!r} is not a duration (a number with an optional unit ms, s, m, h, d, w)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2,
               "mib": 1024 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def size(text):
    """``65536``, ``64KiB``, ``64MiB``, ``1GB`` -> bytes (int)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        _fail(f"{text!r} is not a size (a whole number with an optional unit B, KiB, MiB, GiB, KB, MB, GB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def choice(*options):
    def convert(text):
        if text not in options:
            _fail(f"{text!r} is not one of {', '.join(options)}")
        return text
    return convert


def _check_server(text):
    """Parse a server endpoint string as ``serverFromString`` does, building
    no endpoint (a plugin's, such as txtorcon's ``onion:``, would start Tor)."""
    endpoints._parseServer(text, None)


def _check_client(text):
    """Parse a client endpoint string as ``clientFromString`` does, building no endpoint."""
    args, kwargs = endpoints._parse(text)
    name = args.pop(0).upper()
    if name in endpoints._clientParsers:
        endpoints._clientParsers[name](*args, **kwargs)
    else:
        endpoints._matchPluginToPrefix(
            getPlugins(IStreamClientEndpointStringParserWithReactor), name)


def _endpoint(check, kind):
    """A converter checking an endpoint string with ``check``."""
    def convert(text):
        if not text:
            _fail("must not be empty")
        try:
            check(text)
        except Exception as e:
            _fail(f"{text!r} is not a valid {kind} endpoint string: {e}")
        return text
    return convert


server_endpoint = _endpoint(_check_server, "server")
client_endpoint = _endpoint(_check_client, "client")


def path(text):
    """A filesystem path; relative paths are taken from the working directory."""
    if not text:
        _fail("must not be empty")
    return os.path.abspath(os.path.expanduser(text))


def existing_file(text):
    value = path(text)
    if not os.path.isfile(value):
        _fail(f"file {value} does not exist")
    return value


def optional(convert):
    """Allow an empty value, meaning "not set" (None)."""
    def wrapped(text):
        return convert(text) if text else None
    return wrapped


def host_port(text):
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        _fail(f"{text!r} is not host:port")
    return host, int(port)


def word_list(text):
    """Comma- or whitespace-separated words."""
    return [w for w in re.split(r"[,\s]+", text) if w]


def protocol_id(text):
    """A libp2p protocol id such as ``/ipfs/kad/1.0.0``."""
    if not text.startswith("/") or any(c.isspace() for c in text) or len(text) > 1024:
        raise ValueError(f"{text!r}: a protocol id starts with / and has no spaces")
    return text


_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def node_id(text):
    """A cluster node id: it is part of NATS subjects and consumer names."""
    if not _NODE_ID.fullmatch(text):
        _fail(f"{text!r}: 1 to 32 of A-Z a-z 0-9 _ -")
    return text


def engine_urls(text):
    """NATS server URLs, comma- or space-separated (nats:// or tls://host:port)."""
    urls = word_list(text)
    if not urls:
        _fail("give at least one engine URL")
    for url in urls:
        if not re.fullmatch(r"(nats|tls)://[^\s/]+:\d{1,5}", url):
            _fail(f"{url!r}: an engine URL is nats://HOST:PORT or tls://HOST:PORT")
    return urls


def port_number(text):
    return integer(0, 65535)(text)


@dataclass(frozen=True)
class Field:
    convert: Callable[[str], Any]
    default: Optional[str] = None       # as it would be written in the ini
    required: bool = False


F = Field

# section name (or "prefix:*" for named sections) -> key -> Field
SCHEMA = {
    "relay": {
        "id": F(name, "relay1"),
        "data_dir": F(path, "var"),
        "fd_reserve": F(integer(16), "64"),
    },
    "tcp": {
        "listen": F(server_endpoint, "tcp:55665:interface=127.0.0.1"),
        "max_line": F(size, "65536"),
        "max_connections": F(integer(1), "10000"),
        "max_connections_per_ip": F(integer(1), "100"),
        "idle_timeout": F(duration, "300"),
        "handshake_timeout": F(duration, "30"),
        "output_buffer": F(size, "1MiB"),
        "stall_timeout": F(duration, "30"),
        "line_timeout": F(duration, "30"),
        "backlog": F(integer(1), "1024"),
        "history_limit": F(integer(1), "500"),
        "require_auth": F(boolean, "no"),
    },
    "e2ee": {
        "require_encryption": F(boolean, "no"),
        "max_prekeys": F(integer(1, 1000), "100"),
        "fetch_timeout": F(duration, "5"),
    },
    "ratelimit": {
        "messages": F(integer(1), "10"),
        "per_seconds": F(duration, "10"),
        "ban_after": F(integer(1), "5"),
        "ban_window": F(duration, "60"),
        "ban_duration": F(duration, "10m"),
    },
    "dedup": {
        "window": F(duration, "24h"),
        "max_entries": F(integer(1), "200000"),
    },
    "mailbox": {
        "max_per_peer": F(integer(1), "10000"),
        "ttl": F(duration, "7d"),
        "max_rooms_per_peer": F(integer(1), "64"),
        "max_members_per_room": F(integer(1), "1000"),
    },
    "journal": {
        "fsync": F(choice("always", "batch", "never"), "batch"),
        "fsync_interval": F(duration, "1s"),
        "batch_interval": F(duration, "0"),
        "retention": F(duration, "7d"),
        "max_size": F(size, "1GiB"),
        "segment_size": F(size, "64MiB"),
        "prune_interval": F(duration, "10m"),
        "checkpoint_interval": F(duration, "1m"),
        "checkpoint_bytes": F(size, "16MiB"),
    },
    "udp": {
        "listen": F(port_number, "8000"),
        "interface": F(string, "127.0.0.1"),
        "keepalive": F(duration, "10"),
        "stale_after": F(duration, "60"),
        "max_datagram": F(integer(576, 65507), "8192"),
        "max_peers": F(integer(1), "100000"),
        "rate": F(number(1), "200"),
        "burst": F(integer(1), "400"),
        "claim_rate": F(number(0.01), "1"),
        "claim_burst": F(integer(1), "10"),
        "max_sources": F(integer(16), "65536"),
        "peer_list_max": F(integer(0, 256), "32"),
        "announce_limit": F(integer(0), "64"),
        "socket_buffer": F(size, "4MiB"),
        "native_relay": F(boolean, "yes"),
    },
    "admin": {
        "listen": F(server_endpoint, "tcp:2222:interface=127.0.0.1"),
        "authorized_keys": F(existing_file, required=True),
        "host_key": F(optional(path), ""),
        "passwords": F(optional(existing_file), ""),
        "login_timeout": F(duration, "30s"),
        "max_connections": F(integer(1), "16"),
        "max_connections_per_ip": F(integer(1), "4"),
    },
    "http": {
        "listen": F(server_endpoint, "tcp:9001:interface=127.0.0.1"),
        "stats_interval": F(duration, "60"),
        "token": F(optional_string, ""),
        "token_file": F(optional(existing_file), ""),
    },
    "tls": {
        "cert": F(existing_file, required=True),
        "key": F(existing_file, required=True),
        "client_ca": F(optional(existing_file), ""),
        "require_client_cert": F(boolean, "no"),
        "listeners": F(word_list, "tcp"),
        "reload_interval": F(duration, "0"),
    },
    "federation": {
        "listen": F(server_endpoint, "tcp:55765:interface=127.0.0.1"),
        "peers_file": F(optional(path), ""),
        "max_hops": F(integer(1, 255), "16"),
        "max_line": F(size, "1MiB"),
        "handshake_timeout": F(duration, "10"),
        "keepalive": F(duration, "15"),
        "dead_after": F(duration, "45"),
        "backoff_initial": F(duration, "0.5"),
        "backoff_max": F(duration, "30"),
        "sync_batch": F(integer(1), "2000"),
        "link_buffer": F(size, "32MiB"),
        "repair_interval": F(duration, "60"),
        "tor_socks": F(optional(client_endpoint), ""),
    },
    "cluster": {
        "engine": F(engine_urls, required=True),
        "node": F(node_id, required=True),
        "replicas": F(integer(1, 5), "3"),
        "liveness": F(duration, "10"),
        "timeout": F(duration, "5"),
    },
    "peer:*": {
        "endpoint": F(client_endpoint, required=True),
        "key": F(optional_string, ""),
        "key_file": F(optional(path), ""),
        "fingerprint": F(optional_string, ""),
        "tls_fingerprint": F(optional_string, ""),
    },
    "tor": {
        "control_port": F(optional(client_endpoint), ""),
        "tor_binary": F(optional(path), ""),
        "onion_key": F(optional(path), ""),
        "port": F(port_number, "0"),
        "target": F(optional_string, ""),
    },
    "libp2p": {
        "listen": F(server_endpoint, "tcp:4001:interface=127.0.0.1"),
        "ws_listen": F(optional(server_endpoint), ""),
        "wss_listen": F(optional(server_endpoint), ""),
        "quic_listen": F(optional(host_port), ""),
        "announce": F(multiaddr_list, ""),
        "allow_peers_file": F(optional(existing_file), ""),
        "deny_peers_file": F(optional(existing_file), ""),
        "max_reservations": F(integer(0), "1024"),
        "max_reservations_per_peer": F(integer(0), "3"),
        "max_reservations_per_ip": F(integer(0), "8"),
        "reservation_ttl": F(duration, "1h"),
        "max_circuits": F(integer(0), "512"),
        "max_circuits_per_peer": F(integer(0), "5"),
        "circuit_duration": F(duration, "1h"),
        "circuit_bytes": F(size, "100MiB"),
        "reservation_rate": F(integer(1), "60"),
        "circuit_rate": F(integer(1), "60"),
        "rate_window": F(duration, "1m"),
        "max_connections": F(integer(1), "4096"),
        "max_connections_per_ip": F(integer(1), "64"),
        "idle_timeout": F(duration, "10m"),
        "handshake_timeout": F(duration, "15s"),
        "connect_timeout": F(duration, "10s"),
        "stats_interval": F(duration, "60"),
        "autonat": F(boolean, "yes"),
        "autonat_dial_private": F(boolean, "no"),
        "autonat_rate": F(integer(1), "3"),
        "autonat_global_rate": F(integer(1), "30"),
        "autonat_dial_timeout": F(duration, "10s"),
        "autonat_dial_data": F(integer(1, 10 * 1024 * 1024), "30000"),
    },
    "kad": {
        "protocol": F(protocol_id, "/ipfs/kad/1.0.0"),
        "k": F(integer(1, 100), "20"),
        "provider_ttl": F(duration, "48h"),
        "max_providers_per_key": F(integer(1), "20"),
        "max_keys_per_provider": F(integer(1), "1000"),
        "max_provider_keys": F(integer(1), "100000"),
        "record_ttl": F(duration, "36h"),
        "max_record_size": F(size, "10KiB"),
        "max_records": F(integer(1), "100000"),
        "request_rate": F(integer(1), "200"),
        "request_window": F(duration, "1s"),
        "rendezvous": F(word_list, "/libp2p/relay"),
        "advertise_descord": F(boolean, "yes"),
        "advertise_interval": F(duration, "5m"),
        "save_interval": F(duration, "1m"),
    },
    "gossipsub": {
        "topics": F(word_list, ""),
        "bridge": F(word_list, ""),
        "bridge_federated": F(boolean, "yes"),
        "subscribe_all": F(boolean, "no"),
        "max_topics": F(integer(1), "64"),
        "strict_signing": F(boolean, "yes"),
        "heartbeat_interval": F(duration, "1s"),
        "d": F(integer(1), "6"),
        "d_lo": F(integer(0), "4"),
        "d_hi": F(integer(1), "12"),
        "d_lazy": F(integer(0), "6"),
        "seen_ttl": F(duration, "2m"),
        "max_message_size": F(size, "1MiB"),
        "max_topics_per_peer": F(integer(1), "256"),
        "max_peers_per_topic": F(integer(1), "10000"),
        "max_queued": F(size, "4MiB"),
    },
}


class Settings:
    """Validated settings: ``settings.relay.id``, ``settings.get("udp")``."""

    def __init__(self, sections, named, source):
        self._sections = sections
        self._named = named
        self.source = source

    def __getattr__(self, name):
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name):
        """The section's values, or None when the section is not in the file."""
        return self._sections.get(name)

    def enabled(self, name):
        return name in self._sections

    def named(self, prefix):
        """``{NAME: section}`` for every ``[prefix:NAME]`` section."""
        return dict(self._named.get(prefix, {}))


ALWAYS_PRESENT = ("relay", "ratelimit", "dedup", "mailbox", "journal", "e2ee")


def _convert_section(source, section, schema, values):
    out = {}
    for key in values:
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{source}: [{section}] {key}: unknown key (known keys: {known})")
    for key, field in schema.items():
        if key in values:
            raw = values[key].strip()
        elif field.required:
            raise ConfigError(f"{source}: [{section}] {key}: required but missing")
        else:
            raw = field.default if field.default is not None else ""
        try:
            out[key] = field.convert(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: [{section}] {key}: {e}") from None
    return SimpleNamespace(**out)


def parse(text, source="<string>"):
    """Parse ini text into Settings, raising ConfigError."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), default_section="\0none")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {e}") from None
    sections, named = {}, {}
    for section in parser.sections():
        if ":" in section:
            prefix, name = section.split(":", 1)
            schema = SCHEMA.get(prefix + ":*")
            if schema is None or not name:
                raise ConfigError(f"{source}: [{section}]: unknown section")
            if not names.valid(name):
                raise ConfigError(f"{source}: [{section}]: {names.problem(name, 'a relay name')}")
            named.setdefault(prefix, {})[name] = _convert_section(
                source, section, schema, parser[section])
            continue
        schema = SCHEMA.get(section)
        if schema is None:
            known = ", ".join(sorted(SCHEMA))
            raise ConfigError(f"{source}: [{section}]: unknown section (known sections: {known})")
        sections[section] = _convert_section(source, section, schema, parser[section])
    for section in ALWAYS_PRESENT:
        if section not in sections:
            sections[section] = _convert_section(source, section, SCHEMA[section], {})
    return Settings(sections, named, source)


def validate(settings):
    """Rules across sections, checked before anything is built; raises
    ConfigError naming ``[section] key``."""
    if settings.enabled("tor"):
        from relayd.tor import onion_target
        try:
            onion_target(settings)
        except ValueError as e:
            raise ConfigError(f"{settings.source}: {e}") from None
    if settings.enabled("tls"):
        for name in settings.tls.listeners:
            listen = SCHEMA.get(name, {}).get("listen")
            if listen is None or listen.convert is not server_endpoint:
                raise ConfigError(f"{settings.source}: [tls] listeners: {name!r} is not a "
                                  f"section with a stream listener")
    if settings.enabled("cluster") and settings.cluster.liveness < 1.0:
        raise ConfigError(f"{settings.source}: [cluster] liveness: at least 1 s")
    if settings.enabled("libp2p") and settings.libp2p.wss_listen is not None \
            and not settings.enabled("tls"):
        raise ConfigError(f"{settings.source}: [libp2p] wss_listen needs the [tls] section "
                          f"(its certificate)")
    return settings


def load(filename):
    """Read, parse and validate an ini file, raising ConfigError."""
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {filename}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {filename} is not UTF-8: {e}") from None
    return validate(parse(text, source=filename))
