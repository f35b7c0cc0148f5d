"""HTTP views on Faust's web server: health, Prometheus metrics, the query API.

Any replica answers any query. Address lookups go to the replica that owns
the address's partition (Faust's table routing on the profiles table, whose
raw key serializer hashes like the input topic's keys); listings and hash
lookups, which no key locates, ask every replica that holds a share of the
anomaly buffer and merge. Address and anomaly lookups go through the Redis
read-through cache first.

Every parameter is validated before use: a bad one gets a 400 with a JSON
error, an unknown route or key a 404, and no user-supplied text reaches a
Redis key, a log line or a forwarded URL other than in normalised form.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import re
import time
import uuid
from collections import deque

import orjson
import structlog
from aiohttp import ClientError, ClientTimeout, web
from faust.web import Request, Response, View
from yarl import URL
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .. import __version__, metrics
from ..detect import feedback
from ..detect.schema import ADDRESS, TX_HASH
from ..detect.features import AddressProfile
from .openapi import OPENAPI

log = structlog.get_logger(__name__)

CURSOR = re.compile(r"(\d{1,12}(?:\.\d{1,17})?)_(0x[0-9a-f]{64})")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_LIMIT = 500
# Set on requests one replica makes to another: the peer answers from its own
# share only, without the cache. Signed with API_PEER_KEY (`hop_value`), so a
# client cannot send it to skip the cache or make a replica ask its peers.
HOP_HEADER = "X-Anomaly-Stream-Hop"
HOP_MAX_AGE = 30.0  # seconds a signed hop stays valid (replicas' clocks agree within this)
PEER_TIMEOUT = 5.0  # one deadline for all the peers a request asks
# Queries share the event loop with detection: past this many at once, a query
# gets a 503 at once instead of queueing (probes and metrics are never refused).
MAX_QUERIES_IN_FLIGHT = 64
SCORE_BINS = 50  # the score histogram /api/v1/stats gives per model (the model keeps 1,000 bins)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(body: dict | list, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


# -- parameters ---------------------------------------------------------------

def parse_address(raw: str) -> str:
    if not ADDRESS.fullmatch(raw):
        raise ApiError(400, "address must be 0x followed by 40 hex digits")
    return raw.lower()


def parse_hash(raw: str) -> str:
    if not TX_HASH.fullmatch(raw):
        raise ApiError(400, "tx_hash must be 0x followed by 64 hex digits")
    return raw.lower()


def parse_number(query, name: str, default: float, lo: float, hi: float, integer: bool = False) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be {'an integer' if integer else 'a number'}") from None
    if not lo <= value <= hi:  # also rejects nan
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return value


def hop_value(key: str, path_qs: str, now: float) -> str:
    """The hop header for a request to `path_qs` at `now`: "<unix s>.<HMAC-SHA256 hex>", or "1" unsigned."""
    if not key:
        return "1"
    stamp = f"{now:.0f}"
    mac = hmac.new(key.encode(), f"{stamp} {path_qs}".encode(), "sha256").hexdigest()
    return f"{stamp}.{mac}"


def check_hop(key: str, value: str, path_qs: str, now: float) -> None:
    """Refuse a hop header that `hop_value` with this key did not make within HOP_MAX_AGE."""
    if not key:
        return
    stamp, _, _ = value.partition(".")
    try:
        fresh = abs(now - float(stamp)) <= HOP_MAX_AGE
    except ValueError:
        fresh = False
    if not (fresh and hmac.compare_digest(value.encode(), hop_value(key, path_qs, float(stamp)).encode())):
        raise ApiError(401, f"{HOP_HEADER} is for replicas: a bad or expired signature")


def authorise_read(settings, authorization: str) -> None:
    """With API_READ_KEY set, /api/v1 needs `Authorization: Bearer` with it (or the write key)."""
    key = settings.api_read_key
    if not key:
        return
    given = authorization.encode()
    if not any(k and hmac.compare_digest(given, f"Bearer {k}".encode()) for k in (key, settings.api_write_key)):
        raise ApiError(401, "/api/v1 needs Authorization: Bearer <API_READ_KEY>")


def authorise_write(key: str, authorization: str) -> None:
    """Writes need `Authorization: Bearer <API_WRITE_KEY>`; with no key set there are none."""
    if not key:
        raise ApiError(403, "writes are disabled: API_WRITE_KEY is not set")
    if not hmac.compare_digest(authorization.encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "a write needs Authorization: Bearer <API_WRITE_KEY>")


def parse_cursor(raw: str | None) -> tuple[float, str] | None:
    if raw is None:
        return None
    match = CURSOR.fullmatch(raw)
    if not match:
        raise ApiError(400, "cursor must be a next_cursor returned by this API")
    return float(match.group(1)), match.group(2)


def cursor_of(document: dict) -> str:
    # repr() round-trips a float exactly, so no item is skipped or repeated at a page edge.
    return f"{document['detected_at']!r}_{document['tx_hash']}"


# -- what the views read ----------------------------------------------------------


class Api:
    """The worker as the views see it: its tables, the cache, the other replicas."""

    def __init__(self, app, profiles, anomaly_buffer):
        self.app = app
        self.settings = app.settings
        self.worker = app.worker
        self.cache = app.worker.cache
        self.profiles = profiles
        self.anomaly_buffer = anomaly_buffer
        self.throughput: deque[tuple[float, float]] = deque(maxlen=13)  # (monotonic, processed), one a 5 s tick
        self.queries_in_flight = 0
        # Buffered values decoded by an earlier listing (the same bytes objects stay in the
        # table, their hashes cached): a listing decodes only what arrived since.
        self._decoded: dict[bytes, dict] = {}

    def owned_partitions(self) -> list[int]:
        return self.app.assigned(self.settings.kafka_input_topic)

    def local_anomalies(self) -> list[dict]:
        """This replica's share of the buffer, newest first, already past their TTL excluded.

        Only its active partitions': the table also holds Faust's standby copies of
        other replicas' partitions, which would list every anomaly twice in a merge.
        """
        owned = set(self.owned_partitions())
        cutoff = time.time() - self.settings.anomaly_buffer_ttl_seconds
        known, decoded = self._decoded, {}
        for raw in list(self.anomaly_buffer.data.values()):
            document = known.get(raw)
            decoded[raw] = orjson.loads(raw) if document is None else document
        self._decoded = decoded  # what left the buffer leaves the memo
        documents = [d for d in decoded.values() if d["detected_at"] >= cutoff and d["source"]["partition"] in owned]
        documents.sort(key=lambda d: (d["detected_at"], d["tx_hash"]), reverse=True)
        return documents

    def not_ready_reason(self) -> str | None:
        return self.app.not_ready_reason()

    def consumer_lag(self) -> dict[int, int]:
        """Lag of this replica's input partitions only, so a sum over replicas counts each once."""
        ends, committed = self.app.monitor.tp_end_offsets, self.app.monitor.tp_committed_offsets
        topic = self.settings.kafka_input_topic
        return {tp.partition: max(0, ends[tp] - committed.get(tp, 0))
                for tp in self.app.assignor.assigned_actives() if tp.topic == topic and tp in ends}

    def me(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    def peers(self) -> dict[str, list[int]]:
        """Web URLs of the other replicas holding a share of the anomaly buffer, with their partitions."""
        try:
            hosts = self.app.router.table_metadata(self.anomaly_buffer.name)
        except KeyError:
            raise ApiError(503, "partition assignment not known yet") from None
        me, peers = self.me(), {}
        for url, topics in hosts.items():
            url = str(url).rstrip("/")
            if url != me:
                peers.setdefault(url, []).extend(p for partitions in topics.values() for p in partitions)
        return {url: sorted(partitions) for url, partitions in sorted(peers.items())}

    async def ask(self, url: str) -> tuple[int, bytes]:
        try:
            headers = {HOP_HEADER: hop_value(self.settings.api_peer_key, URL(url).path_qs, time.time())}
            if self.settings.api_read_key:
                headers["Authorization"] = f"Bearer {self.settings.api_read_key}"
            async with self.app.http_client.get(url, headers=headers,
                                                timeout=ClientTimeout(total=PEER_TIMEOUT)) as resp:
                return resp.status, await resp.read()
        except (ClientError, asyncio.TimeoutError) as exc:
            raise ApiError(503, f"a replica did not answer: {type(exc).__name__}") from None

    async def fan_out(self, path: str) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Ask every peer for `path` at once, under one deadline: the 200 answers, and the
        partitions of the peers that gave none (a dead replica costs one deadline, not a 503)."""
        peers = self.peers()

        async def one(url: str) -> tuple[int, bytes]:
            try:
                return await self.ask(url + path)
            except ApiError as exc:
                return exc.status, orjson.dumps({"error": exc.message})

        answers = await asyncio.gather(*(one(url) for url in peers))
        missing = sorted(p for (status, _), partitions in zip(answers, peers.values()) if status != 200
                         for p in partitions)
        return [(status, body) for status, body in answers if status == 200], missing

    async def cached(self, request: Request, kind: str, ident: str, load, not_found: str) -> web.Response:
        """Through the cache, unless another replica asks: it looked in the cache already."""
        if HOP_HEADER in request.headers:
            body = await load()
        else:
            body = await self.cache.get_or_load(kind, ident, load)
        if body is None:
            raise ApiError(404, not_found)
        return json_bytes(body)

    def feedback_stats(self) -> dict:
        verdicts = self.app.feedback.table
        counts = verdicts.counts()
        precision = verdicts.precision()
        for name, n in counts.items():
            metrics.FEEDBACK_VERDICTS.labels(name).set(n)
        metrics.FEEDBACK_PRECISION.set(float("nan") if precision is None else precision)
        return {**counts, "precision": precision}

    def local_stats(self) -> dict:
        processed = REGISTRY.get_sample_value("transactions_processed_total")
        anomalies = REGISTRY.get_sample_value("anomalies_published_total")
        rate = 0.0
        if len(self.throughput) >= 2:
            (t0, n0), (t1, n1) = self.throughput[0], self.throughput[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return {
            "replica": str(self.app.conf.canonical_url),
            "partitions": self.owned_partitions(),
            "processed_total": processed,
            "anomalies_total": anomalies,
            "throughput_tx_per_s": round(rate, 1),
            "flag_rate": anomalies / processed if processed else 0.0,
            "thresholds": {str(p): m.threshold for p, m in sorted(self.worker.models.items())},
            "lag": {str(p): n for p, n in sorted(self.consumer_lag().items())},
            "models": self.model_states(),
        }

    def model_states(self) -> list[dict]:
        """Each model this replica holds, for the dashboard: warm-up, threshold, checkpoint age, scores.

        `score_histogram`: the shares of the decayed histogram the threshold is the
        quantile of, in SCORE_BINS equal bins over [0, 1]; `flagged`: anomalies
        published by this process (a restart or a moved partition starts it at 0).
        """
        worker, now = self.worker, self.worker.clock()
        states = []
        for key, model in sorted(worker.models.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            total = float(model.hist.sum())
            shares = model.hist.reshape(SCORE_BINS, -1).sum(axis=1) / total if total > 0 else []
            saved = worker.saved_at.get(key)
            states.append({
                "perspective": key[0], "partition": key[1], "warm": model.warm, "seen": model.seen,
                "flagged": worker.flagged[key], "threshold": model.threshold, "drift": round(model.drift, 6),
                "checkpoint_age_seconds": None if saved is None else round(now - saved, 1),
                "score_histogram": [round(float(v), 6) for v in shares],
            })
        return states


API = web.AppKey("api", Api)  # the middleware's way to the Api


class ApiView(View):
    @property
    def api(self) -> Api:
        return self.app.api


# -- health --


class Live(ApiView):
    """Liveness means progress: records waiting and no batch done within LIVENESS_STALL_SECONDS is dead."""

    async def get(self, request: Request) -> Response:
        lag = sum(self.api.consumer_lag().values())
        if self.api.worker.stalled(lag):
            return json_response({"status": "stalled", "lag": lag}, status=503)
        return json_response({"status": "live"})


class Ready(ApiView):
    """Ready once tables are recovered and this worker holds input partitions."""

    async def get(self, request: Request) -> Response:
        reason = self.api.not_ready_reason()
        if reason:
            return json_response({"status": "not ready", "reason": reason}, status=503)
        return json_response({"status": "ready", "version": __version__})


class Health(ApiView):
    async def get(self, request: Request) -> Response:
        api = self.api
        worker = api.worker
        reason = api.not_ready_reason()
        return json_response({
            "status": "ready" if reason is None else "not ready",
            "reason": reason,
            "version": __version__,
            "kafka": {"bootstrap_servers": api.settings.kafka_bootstrap_servers,
                      "assigned_partitions": api.owned_partitions()},
            "redis": {"reachable": await api.cache.ping(), "errors": api.cache.errors},
            "recovery": {"in_recovery": bool(api.app.in_recovery),
                         "completed": api.app.tables.recovery.completed.is_set()},
            "models": {str(p): {"seen": m.seen, "warm": m.warm, "threshold": m.threshold}
                       for p, m in sorted(worker.models.items())},
            "anomaly_buffer": {"size": len(worker.buffer_bound),
                               "max_size_per_partition": api.settings.anomaly_buffer_max_per_partition},
            "address_profiles": len(worker.profiles_bound),
        })


class Metrics(ApiView):
    async def get(self, request: Request) -> Response:
        self.api.feedback_stats()  # sets the feedback gauges
        metrics.KAFKA_CONSUMER_LAG.clear()
        topic = self.api.settings.kafka_input_topic
        for partition, lag in self.api.consumer_lag().items():
            metrics.KAFKA_CONSUMER_LAG.labels(topic, partition).set(lag)
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0],
                            charset="utf-8")


# -- queries --


class OpenApi(ApiView):
    async def get(self, request: Request) -> Response:
        return json_response(OPENAPI)


class Anomalies(ApiView):
    """Recent anomalies, newest first, with stable cursor pagination."""

    async def get(self, request: Request) -> Response:
        query = request.query
        address = parse_address(query["address"]) if "address" in query else None
        min_score = parse_number(query, "min_score", 0.0, 0.0, 1.0)
        since = parse_number(query, "since", 0.0, 0.0, 1e12)
        limit = int(parse_number(query, "limit", 100, 1, MAX_LIMIT, integer=True))
        cursor = parse_cursor(query.get("cursor"))
        documents = [
            d for d in self.api.local_anomalies()
            if (address is None or d["address"] == address) and d["score"] >= min_score
            and d["detected_at"] >= since
            and (cursor is None or (d["detected_at"], d["tx_hash"]) < cursor)
        ][:limit]
        missing: list[int] = []
        if HOP_HEADER not in request.headers:
            params = {"min_score": min_score, "since": since, "limit": limit}
            if address:
                params["address"] = address
            if cursor:
                params["cursor"] = f"{cursor[0]!r}_{cursor[1]}"
            qs = "&".join(f"{k}={v}" for k, v in params.items())
            answers, missing = await self.api.fan_out(f"/api/v1/anomalies?{qs}")
            for _, body in answers:
                documents.extend(orjson.loads(body)["items"])
            documents.sort(key=lambda d: (d["detected_at"], d["tx_hash"]), reverse=True)
            documents = documents[:limit]
        next_cursor = cursor_of(documents[-1]) if len(documents) == limit else None
        # A replica that did not answer leaves its partitions out: said, not a 503.
        return json_response({"items": documents, "next_cursor": next_cursor,
                              "partial": bool(missing), "missing_partitions": missing})


class Anomaly(ApiView):
    async def get(self, request: Request, tx_hash: str) -> Response:
        tx_hash = parse_hash(tx_hash)
        api = self.api

        async def load() -> bytes | None:
            for document in api.local_anomalies():
                if document["tx_hash"] == tx_hash:
                    return orjson.dumps(document)
            if HOP_HEADER in request.headers:
                return None
            answers, _ = await api.fan_out(f"/api/v1/anomalies/{tx_hash}")
            return answers[0][1] if answers else None

        return await api.cached(request, "anomaly", tx_hash, load, "no anomaly with this hash in the buffer")


class Feedback(ApiView):
    """An analyst's verdict on a buffered anomaly: to the feedback topic, which every replica follows."""

    async def post(self, request: Request, tx_hash: str) -> Response:
        api = self.api
        authorise_write(api.settings.api_write_key, request.headers.get("Authorization", ""))
        tx_hash = parse_hash(tx_hash)
        if request.content_length is not None and request.content_length > feedback.MAX_BODY:
            raise ApiError(400, f"the body must be at most {feedback.MAX_BODY} bytes")
        try:
            verdict, note = feedback.parse_request(await request.content.read(feedback.MAX_BODY + 1))
        except feedback.FeedbackError as exc:
            raise ApiError(400, str(exc)) from None
        documents = [d for d in api.local_anomalies() if d["tx_hash"] == tx_hash]
        answers, _ = await api.fan_out(f"/api/v1/anomalies/{tx_hash}")
        documents.extend(orjson.loads(body) for _, body in answers)
        if not documents:
            raise ApiError(404, "no anomaly with this hash in the buffer")
        addresses = sorted({d["address"] for d in documents})
        at = time.time()
        await api.app.producer.send_and_wait(
            api.settings.kafka_feedback_topic, tx_hash.encode(),
            feedback.encode(verdict, note, addresses, at), 0, None, None)
        log.info("feedback_recorded", tx=tx_hash, verdict=verdict, addresses=addresses)
        return json_response({"tx_hash": tx_hash, "verdict": verdict, "note": note,
                              "addresses": addresses, "at": at}, status=202)


class Address(ApiView):
    """A sender's behavioural profile and its recent anomalies, from the owning replica."""

    async def get(self, request: Request, address: str) -> Response:
        address = parse_address(address)
        api = self.api
        key = address.encode()

        async def load() -> bytes | None:
            try:
                owner = str(api.app.router.key_store(api.profiles.name, key)).rstrip("/")
            except KeyError:
                raise ApiError(503, "partition assignment not known yet") from None
            if owner != api.me() and HOP_HEADER not in request.headers:
                status, body = await api.ask(f"{owner}/api/v1/addresses/{address}")
                if status == 404:
                    return None
                if status != 200:
                    raise ApiError(503, "the owning replica could not answer")
                return body
            raw = api.profiles.data.get(key)
            if raw is None:
                return None
            profile = AddressProfile.from_bytes(raw)
            recent = [d for d in api.local_anomalies() if d["address"] == address][:50]
            return orjson.dumps({"address": address, "partition": profile.partition,
                                 "profile": profile.as_dict(), "anomalies": recent})

        return await api.cached(request, "address", address, load, "address not seen (or expired)")


class Stats(ApiView):
    async def get(self, request: Request) -> Response:
        local = self.api.local_stats()
        if HOP_HEADER in request.headers:
            return json_response(local)
        answers, missing = await self.api.fan_out("/api/v1/stats")
        replicas = [local] + [orjson.loads(body) for _, body in answers]
        processed = sum(r["processed_total"] for r in replicas)
        anomalies = sum(r["anomalies_total"] for r in replicas)
        return json_response({
            "throughput_tx_per_s": round(sum(r["throughput_tx_per_s"] for r in replicas), 1),
            "processed_total": processed,
            "anomalies_total": anomalies,
            "flag_rate": anomalies / processed if processed else 0.0,
            # Every replica holds every verdict: this one's view is the whole.
            "feedback": self.api.feedback_stats(),
            "partitions_served": sorted(p for r in replicas for p in r["partitions"]),
            "partial": bool(missing), "missing_partitions": missing,
            "replicas": replicas,
        })


# -- the dashboard: static files shipped in the package, under a strict CSP --

DASHBOARD_FILES = {  # the only names served: nothing else under the directory, nothing outside it
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
DASHBOARD_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'; object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def dashboard_file(name: str) -> web.Response:
    if name not in DASHBOARD_FILES:
        raise ApiError(404, "no such dashboard file")
    body = importlib.resources.files(__package__).joinpath("dashboard", name).read_bytes()
    return web.Response(body=body, content_type=DASHBOARD_FILES[name], charset="utf-8",
                        headers=DASHBOARD_HEADERS)


class Dashboard(View):
    async def get(self, request: Request) -> Response:
        return dashboard_file("index.html")


class DashboardFile(View):
    async def get(self, request: Request, name: str) -> Response:
        return dashboard_file(name)


ROUTES = (
    ("/health/live", Live),
    ("/health/ready", Ready),
    ("/health", Health),
    ("/api/metrics", Metrics),
    ("/api/v1/openapi.json", OpenApi),
    ("/api/v1/anomalies", Anomalies),
    ("/api/v1/anomalies/{tx_hash}", Anomaly),
    ("/api/v1/anomalies/{tx_hash}/feedback", Feedback),
    ("/api/v1/addresses/{address}", Address),
    ("/api/v1/stats", Stats),
    ("/dashboard", Dashboard),
    ("/dashboard/{name}", DashboardFile),
)


# -- every request: id, JSON errors, metrics, one log line --


@web.middleware
async def observe(request: web.Request, handler):
    started = time.perf_counter()
    rid = request.headers.get("X-Request-ID", "")
    rid = rid if REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    api = request.app[API]
    query = route.startswith("/api/v1/")
    try:
        if query and api.queries_in_flight >= MAX_QUERIES_IN_FLIGHT:
            raise ApiError(503, "too many queries in flight: retry shortly")
        api.queries_in_flight += query
        try:
            if query and route != "/api/v1/openapi.json":
                authorise_read(api.settings, request.headers.get("Authorization", ""))
            if HOP_HEADER in request.headers:
                check_hop(api.settings.api_peer_key, request.headers[HOP_HEADER], request.path_qs, time.time())
            response = await handler(request)
        finally:
            api.queries_in_flight -= query
    except ApiError as exc:
        response = json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        response = json_response({"error": exc.reason}, status=exc.status)
    except Exception:  # noqa: BLE001 - answer JSON and keep the traceback in the log
        log.exception("http_request_failed", route=route, request_id=rid)
        response = json_response({"error": "internal error", "request_id": rid}, status=500)
    response.headers["X-Request-ID"] = rid
    elapsed = time.perf_counter() - started
    metrics.HTTP_REQUESTS.labels(request.method, route, response.status).inc()
    metrics.HTTP_LATENCY.labels(route).observe(elapsed)
    log.info("http_request", method=request.method, route=route, status=response.status,
             duration_ms=round(elapsed * 1000, 2), request_id=rid)
    return response


def register(app, profiles, anomaly_buffer) -> None:
    app.api = api = Api(app, profiles, anomaly_buffer)
    for path, view in ROUTES:
        app.page(path)(view)

    @app.timer(5.0)
    async def sample_throughput() -> None:
        api.throughput.append((time.monotonic(), REGISTRY.get_sample_value("transactions_processed_total")))

    app.web.web_app[API] = api
    app.web.web_app.middlewares.append(observe)
