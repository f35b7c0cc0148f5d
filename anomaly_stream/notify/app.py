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

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..settings import Settings
from ..stream import agents
from ..stream.consumer import BatchingTransport
from ..stream.faust_io import FaustSink, TableStore
from ..stream.topics import ensure_notify_topics
from .config import NotifyConfig
from .delivery import Delivery
from .notifier import Notifier


class NotifyApp(faust.App):
    settings: Settings
    notifier: Notifier
    batch_topics: frozenset[str]

    def _new_transport(self):
        return BatchingTransport(self.conf.broker_consumer, self)

    async def on_first_start(self) -> None:
        await ensure_notify_topics(self.settings)
        await super().on_first_start()

    async def on_start(self) -> None:
        await super().on_start()
        await self.notifier.delivery.start()

    async def on_stop(self) -> None:
        await self.notifier.delivery.stop()
        await super().on_stop()

    def owned_partitions(self) -> frozenset[int]:
        topic = self.settings.kafka_anomalies_topic
        return frozenset(tp.partition for tp in self.assignor.assigned_actives() if tp.topic == topic)

    def not_ready_reason(self) -> str | None:
        if self.rebalancing:
            return "rebalancing"
        if self.in_recovery or not self.tables.recovery.completed.is_set():
            return "recovering tables"
        if not self.owned_partitions():
            return "no partitions of the anomalies topic assigned"
        return None


def _json(body: dict, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class Live(View):
    async def get(self, request: Request) -> Response:
        return _json({"status": "live"})


class Ready(View):
    async def get(self, request: Request) -> Response:
        reason = self.app.not_ready_reason()
        if reason:
            return _json({"status": "not ready", "reason": reason}, status=503)
        return _json({"status": "ready", "version": __version__})


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
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=settings.table_store,
        datadir=datadir,
        processing_guarantee="at_least_once",  # deliveries to the outside world cannot join a transaction
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka_topic_replication_factor,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_seconds,
        broker_rebalance_timeout=settings.kafka_session_timeout_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        broker_max_poll_records=settings.kafka_max_poll_records,
        producer_linger=settings.kafka_producer_linger_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        web_router_enabled=False,
        web_tables_enabled=False,
        autodiscover=False,
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
        await agents.handled(batches, lock, notifier.handle)

    @app.timer(settings.state_sweep_interval_seconds)
    async def expire_episodes() -> None:
        if app.not_ready_reason() is None:
            async with lock:
                await notifier.sweep(app.owned_partitions())

    for path, view in (("/health/live", Live), ("/health/ready", Ready), ("/api/metrics", Metrics)):
        app.page(path)(view)
    return app
