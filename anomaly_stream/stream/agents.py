"""The agents: thin loops over the worker (`worker.Worker` does the work).

Each event of the input topic is one partition's batch (see `consumer`). A
batch is acknowledged once its sends and table writes have been handed to
the producer; Faust flushes the producer before every offset commit (or,
with exactly_once, commits them in one transaction, between batches), so an
offset is never committed ahead of what its message produced.
"""

from __future__ import annotations


def register(app, transactions, edges) -> None:
    worker = app.worker
    input_topic = app.settings.kafka_input_topic

    @app.agent(transactions, name="detect")
    async def detect(batches):
        async for batch in batches:
            # With exactly_once, Faust commits the open transaction on a timer: a
            # commit in the middle of a batch would make its anomalies visible with
            # only the previous offsets, and a crash would then repeat them. The
            # consumer commits only while no batch holds this lock, and the batch is
            # acknowledged before it lets go.
            async with worker.batch_lock:
                await worker.handle(batch.partition, batch.records)
                batches.current_event.ack()

    @app.agent(edges, name="receive")
    async def receive(batches):
        """The same transactions as their receivers see them (co-partitioned with the input)."""
        async for batch in batches:
            async with worker.batch_lock:
                await worker.handle_edges(batch.partition, batch.records)
                batches.current_event.ack()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        await worker.release({tp.partition for tp in revoked if tp.topic == input_topic})
        # The next owner recovers the checkpoint from the changelog: it must be there.
        await app.producer.flush()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs) -> None:
        # Faust skips the revocation callbacks when the worker itself stops: checkpoint
        # here, before its producer's final flush, so a clean scale-in loses no learning.
        await worker.release(set(worker.models))

    @app.timer(app.settings.state_sweep_interval_seconds)
    async def enforce_bounds() -> None:
        if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
            return
        await worker.sweep(frozenset(
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == input_topic))
