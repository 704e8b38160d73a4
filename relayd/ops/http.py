"""The ``[http]`` service: ``/health``, ``/stats`` and ``/metrics`` (twisted.web).

``/health`` answers 200 when every named service of the daemon is running
and its ``health()`` (if any) returns None, else 503 with the reasons.
``/stats`` is ``daemon.stats()`` as JSON.  ``/metrics`` is the daemon's
Prometheus registry (every service's ``relayd_*`` metrics plus process
metrics).  With ``token``/``token_file`` set, every request needs
``Authorization: Bearer <token>``.
"""
import hmac
import json
import re

from prometheus_client import (CONTENT_TYPE_LATEST, Gauge, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest)
from twisted.application.service import MultiService
from twisted.web import resource, server

from relayd.listeners import stream_service
from relayd.ops.metrics import DaemonCollector
from relayd.ops.statslog import StatsLogger

# Counters as Prometheus names them: ``x_total`` only, no ``x_created`` series.
disable_created_metrics()


def health(daemon):
    """``{service name: reason}`` for every service that is not well (empty if all are)."""
    problems = {}
    for svc in daemon:
        if not svc.name:
            continue
        if not svc.running:
            problems[svc.name] = "not running"
        elif hasattr(svc, "health"):
            reason = svc.health()
            if reason:
                problems[svc.name] = reason
    return problems


def _json(request, code, body):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1, sort_keys=True, default=str).encode() + b"\n"


class _Page(resource.Resource):
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        return self._render(request)


class Root(resource.Resource):
    """The monitoring site; ``token`` (str or None) guards every page."""

    def __init__(self, daemon, token=None):
        super().__init__()
        self.daemon = daemon
        self.token = token
        self.putChild(b"health", _Page(self.render_health))
        self.putChild(b"stats", _Page(self.render_stats))
        self.putChild(b"metrics", _Page(self.render_metrics))

    def getChildWithDefault(self, name, request):
        if self.token is not None and not self._authorized(request):
            return _Page(self._unauthorized)
        return super().getChildWithDefault(name, request)

    def _authorized(self, request):
        given = request.getHeader(b"authorization") or b""
        return hmac.compare_digest(given, b"Bearer " + self.token.encode())

    @staticmethod
    def _unauthorized(request):
        request.setHeader(b"www-authenticate", b'Bearer realm="relayd"')
        return _json(request, 401, {"error": "a bearer token is required"})

    def render_health(self, request):
        problems = health(self.daemon)
        if problems:
            code, body = 503, {"status": "unavailable", "problems": problems}
        else:
            names = sorted(svc.name for svc in self.daemon if svc.name)
            code, body = 200, {"status": "ok", "services": names,
                               "uptime": round(self.daemon.uptime(), 3)}
        cluster = getattr(self.daemon, "cluster", None)     # [cluster]: the engine link, members
        if cluster is not None:
            body["cluster"] = cluster.summary()
        return _json(request, code, body)

    def render_stats(self, request):
        return _json(request, 200, self.daemon.stats())

    def render_metrics(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.daemon.registry)


class _MethodRefused(resource.Resource):
    """405 for methods other than GET and HEAD; 400 for a method that is not
    an HTTP token (a malformed request line): no traceback, no log line."""

    isLeaf = True

    def render(self, request):
        if TOKEN.fullmatch(request.method):
            request.setHeader(b"allow", b"GET, HEAD")
            return _json(request, 405, {"error": "only GET and HEAD are served here"})
        return _json(request, 400, {"error": "malformed request method"})


TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")     # RFC 9110 token, bounded


class QuietSite(server.Site):
    """A Site without a per-request access log (scrapes would flood it) that
    serves GET and HEAD only, answering any other method before dispatch."""

    noisy = False

    def log(self, request):
        pass

    def getResourceFor(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.site = self
            request.sitepath = request.prepath[:]
            return _MethodRefused()
        return super().getResourceFor(request)


class MonitorService(MultiService):
    """The ``[http]`` section: the monitoring site and the periodic stats log."""

    def __init__(self, daemon, settings):
        super().__init__()
        self.setName("http")
        self.daemon = daemon
        self.settings = settings
        self.root = Root(daemon, settings.token)
        site = QuietSite(self.root)
        stream_service(daemon, settings.listen, site).setServiceParent(self)
        if settings.stats_interval > 0:
            StatsLogger(daemon, settings.stats_interval).setServiceParent(self)
        registry = daemon.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Gauge("relayd_uptime_seconds", "Seconds since the daemon started",
              registry=registry).set_function(daemon.uptime)
        registry.register(DaemonCollector(daemon))

    def privilegedStartService(self):
        self._load_token()
        super().privilegedStartService()

    def startService(self):
        self._load_token()
        super().startService()

    def _load_token(self):
        if self.settings.token_file and self.root.token is None:
            with open(self.settings.token_file, encoding="utf-8") as f:
                self.root.token = f.readline().strip() or None
            if self.root.token is None:
                raise ValueError(f"[http] token_file: {self.settings.token_file} is empty")

    def stats(self):
        return {"listen": self.settings.listen, "token": self.root.token is not None}
