"""The notifier's Faust app: the anomalies topic in, alerts out (`anomaly-stream notify`).

An app of its own (`<APP_ID>-notify`: its consumer group and the prefix of
its dedup table's changelog), beside the detector's, built by `create_app`
from the settings and the validated TOML file. The agent is the detector's
lock -> handle -> acknowledge loop (`stream.agents.handled`) over the
notifier; the batching consumer hands it each partition's slice of a fetch.
It serves /health/live, /health/ready and /api/metrics on WEB_PORT.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..serve.views import Ready
from ..settings import Settings
from ..stream import agents
from ..stream.faust_io import BatchingApp, FaustSink, TableStore, app_options
from ..stream.topics import ensure_notify_topics
from .config import NotifyConfig
from .delivery import Delivery
from .notifier import Notifier


class NotifyApp(BatchingApp):
    settings: Settings
    notifier: Notifier
    batch_topics: frozenset[str]

    async def ensure_topics(self) -> None:
        await ensure_notify_topics(self.settings)

    async def on_start(self) -> None:
        await super().on_start()
        await self.notifier.delivery.start()

    async def on_stop(self) -> None:
        await self.notifier.delivery.stop()
        await super().on_stop()

    def served_topic(self) -> tuple[str, str]:
        return self.settings.kafka_anomalies_topic, "anomalies"

    @property
    def api(self) -> NotifyApp:
        return self  # what the shared `serve.views.Ready` asks for `not_ready_reason`


class Live(View):
    async def get(self, request: Request) -> Response:
        return web.json_response({"status": "live"})


class Metrics(View):
    async def get(self, request: Request) -> Response:
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0],
                            charset="utf-8")


def create_app(settings: Settings, config: NotifyConfig) -> NotifyApp:
    partitions = settings.kafka_input_partitions
    datadir = os.path.join(settings.data_dir, "notify")  # beside the worker's, when they share a volume
    os.makedirs(datadir, exist_ok=True)
    app = NotifyApp(
        settings.notify_app_id,
        **app_options(settings),
        datadir=datadir,
        processing_guarantee="at_least_once",  # deliveries to the outside world cannot join a transaction
    )
    app.settings = settings
    anomalies = app.topic(settings.kafka_anomalies_topic, key_serializer="raw", value_serializer="raw",
                          partitions=partitions)
    app.batch_topics = frozenset({settings.kafka_anomalies_topic})
    # Keyed by alert key; a write goes to the partition of the anomaly being handled,
    # which holds every anomaly of that key (the topic is keyed by address, part of the key).
    dedup = app.Table("dedup", key_type=bytes, value_type=bytes, partitions=partitions)
    app.notifier = notifier = Notifier(
        config, FaustSink(app), TableStore(dedup), Delivery(config),
        source_topic=settings.kafka_anomalies_topic, dlq_topic=settings.notify_dlq_topic)
    lock = asyncio.Lock()  # the sweep never runs in the middle of a batch

    @app.agent(anomalies, name="notify")
    async def notify(batches):
        await agents.handled(batches, lock, notifier.handle, app.consumer.handled)

    @app.timer(settings.state_sweep_interval_seconds)
    async def expire_episodes() -> None:
        if app.not_ready_reason() is None:
            async with lock:
                await notifier.sweep(frozenset(app.assigned(settings.kafka_anomalies_topic)))

    for path, view in (("/health/live", Live), ("/health/ready", Ready), ("/api/metrics", Metrics)):
        app.page(path)(view)
    return app
