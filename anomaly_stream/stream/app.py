"""The detector's Faust App: topics, tables, the worker, and where the agents and views register.

`faust -A anomaly_stream.stream.app worker` and `anomaly-stream worker` both
run the module-level `app`, built from the environment (see `settings`).
Building it opens no connection: the Redis and RPC clients start and stop
with the app (`on_start`, `on_stop`).
"""

from __future__ import annotations

from typing import Any, Callable

# The first model a worker builds imports River (detect/hst.py), 3-5 s of scipy and
# pandas: done here, before the loop runs, it no longer stalls the first batch and
# the health checks with it (a fault test's probe timed out on it).
import river.anomaly  # noqa: F401
import structlog
from prometheus_client import REGISTRY

from .. import metrics
from ..chain.enrich import Enricher
from ..detect import watchlist
from ..detect.feedback import Verdicts
from ..serve import views
from ..serve.cache import Cache
from ..settings import Settings
from . import agents, kafka
from .faust_io import BatchingApp, FaustSink, TableStore, app_options
from .replica import RawTable, ReplicatedTopic
from .topics import ensure_topics
from .worker import Stores, Topics, Worker, buffer_window_seconds

log = structlog.get_logger(__name__)


class App(BatchingApp):
    """The detector's app: its consumer hands the input and edges topics to agents in batches."""

    settings: Settings
    worker: Worker
    watchlist: ReplicatedTopic
    feedback: ReplicatedTopic  # of a detect.feedback.Verdicts

    async def ensure_topics(self) -> None:
        await ensure_topics(self.settings)

    def served_topic(self) -> tuple[str, str]:
        return self.settings.kafka_input_topic, "input"

    async def on_start(self) -> None:
        await super().on_start()
        await self.worker.cache.start()
        await self.watchlist.start()
        await self.feedback.start()

    async def on_stop(self) -> None:
        # Faust's own stop (consumer, producer, agents) must run whatever ours do: a Redis
        # close that timed out once skipped it, and the worker never exited after SIGTERM.
        try:
            await self.feedback.stop()
            await self.watchlist.stop()
            await self.worker.enricher.stop()
            await self.worker.cache.stop()
        finally:
            await super().on_stop()
            # The last batches run after the web server stops answering: the totals, once more.
            total = REGISTRY.get_sample_value
            log.info("worker_stopped", transactions_consumed=int(total("transactions_consumed_total") or 0),
                     anomalies_published=int(total("anomalies_published_total") or 0))


def watch_lists(table: RawTable) -> Callable[[str], dict[str, str] | None]:
    """The detector's view of the watch-lists: address -> {list: label} (values validated on arrival)."""
    def listed(address: str) -> dict[str, str] | None:
        raw = table.data.get(address.encode())
        if raw is None:
            return None
        return {name: entry.label for name, entry in watchlist.decode_value(raw).items()}

    return listed


def create_app(settings: Settings) -> App:
    app = App(
        settings.app_id,
        **app_options(settings),
        datadir=settings.data_dir,
        processing_guarantee=settings.processing_guarantee,
        # A model checkpoint is one message of a few hundred KiB.
        producer_max_request_size=8 * 1024 * 1024,
        # Faust's own window sweep is replaced by TableBound (see state.py).
        table_cleanup_interval=3600.0,
    )
    app.settings = settings
    partitions = settings.kafka_input_partitions
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": partitions}
    transactions = app.topic(settings.kafka_input_topic, **raw)
    edges = app.topic(settings.edges_topic, **raw)

    # bytes keys and values make Faust use its raw codec: table keys hash to the
    # same partitions as the input topic's keys, which table routing relies on.
    raw = {"key_type": bytes, "value_type": bytes, "partitions": partitions}
    profiles = app.Table("profiles", **raw)
    checkpoints = app.Table("model-checkpoints", **raw)
    ttl = settings.anomaly_buffer_ttl_seconds
    anomaly_buffer = app.Table(
        "anomaly-buffer", partitions=partitions, value_type=bytes,
    ).tumbling(buffer_window_seconds(settings), expires=ttl).table

    # Every replica holds every watch-listed address and every verdict (replica.py says
    # why not a GlobalTable).
    lists = RawTable(watchlist.valid_record)
    security = kafka.client_options(settings)  # TLS, SASL: as Faust's own clients
    app.watchlist = ReplicatedTopic(settings.kafka_bootstrap_servers, settings.kafka_watchlist_topic, lists,
                                    metrics.WATCHLIST_UPDATES, metrics.WATCHLIST_ENTRIES, security)
    verdicts = Verdicts(settings.feedback_ttl_seconds, settings.feedback_benign_seconds,
                        settings.feedback_max_entries)
    app.feedback = ReplicatedTopic(settings.kafka_bootstrap_servers, settings.kafka_feedback_topic, verdicts,
                                   metrics.FEEDBACK_UPDATES, metrics.FEEDBACK_ENTRIES, security)

    cache = Cache(settings)
    app.worker = Worker(
        settings,
        Topics(settings.kafka_input_topic, settings.kafka_anomalies_topic, settings.dlq_topic, settings.edges_topic),
        Stores(TableStore(profiles), TableStore(checkpoints), TableStore(anomaly_buffer)),
        FaustSink(app), cache, Enricher(settings, cache), listed=watch_lists(lists), benign=verdicts.benign,
    )
    agents.register(app, transactions, edges)
    views.register(app, profiles, anomaly_buffer)
    return app


app = create_app(Settings.from_env())
