"""HTTP views on Faust's web server: health, Prometheus metrics, queries."""

from __future__ import annotations

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__


def register(app, settings, tables) -> None:
    def json(web: View, body: dict, status: int = 200) -> Response:
        return web.bytes(orjson.dumps(body), content_type="application/json", status=status)

    @app.page("/health/live")
    class Live(View):
        """The event loop answers: enough for a liveness probe."""

        async def get(self, request: Request) -> Response:
            return json(self, {"status": "live"})

    @app.page("/health/ready")
    class Ready(View):
        """Ready once tables are recovered and this worker holds its assignment."""

        async def get(self, request: Request) -> Response:
            reason = None
            if app.rebalancing:
                reason = "rebalancing"
            elif app.in_recovery or not app.tables.recovery.completed.is_set():
                reason = "recovering tables"
            if reason:
                return json(self, {"status": "not ready", "reason": reason}, status=503)
            return json(self, {"status": "ready", "version": __version__})

    @app.page("/api/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
