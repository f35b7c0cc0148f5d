"""The agents: thin loops over the worker (`worker.Worker` does the work).

Each event of the input topic is one partition's batch (see `consumer`). A
batch is acknowledged once its sends and table writes have been handed to
the producer; Faust flushes the producer before every offset commit (or,
with exactly_once, commits them in one transaction, between batches), so an
offset is never committed ahead of what its message produced.
"""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger(__name__)
# The exit status of a worker that met an error it cannot attribute to one message.
EXIT_UNHANDLED = 70


async def handled(batches, lock, handle, vouch) -> None:
    """Each batch handled, then acknowledged; an unexpected error ends the process, unacknowledged.

    `vouch(message)` tells the consumer the batch was handled: only such
    acknowledgements count (`consumer.BatchingConsumer.ack`).

    The worker turns every bad message into a dead letter, so an exception
    here is a bug or a broken dependency. Raising would let Faust finalise the
    stream, which can acknowledge the batch in flight (committed, never
    scored); exiting at once leaves its offsets uncommitted, and the restarted
    pod reads the batch again.
    """
    async for batch in batches:
        # With exactly_once, Faust commits the open transaction on a timer: a commit
        # in the middle of a batch would make its anomalies visible with only the
        # previous offsets, and a crash would then repeat them. The consumer commits
        # only while no batch holds the lock, and the batch is acknowledged before
        # it lets go.
        async with lock:
            try:
                await handle(batch.partition, batch.records)
            except Exception:  # noqa: BLE001
                log.critical("batch_failed_worker_exiting", partition=batch.partition,
                             first_offset=batch.records[0].offset if batch.records else None, exc_info=True)
                os._exit(EXIT_UNHANDLED)
            event = batches.current_event
            vouch(event.message)
            event.ack()


def register(app, transactions, edges) -> None:
    worker = app.worker
    input_topic = app.settings.kafka_input_topic

    @app.agent(transactions, name="detect")
    async def detect(batches):
        await handled(batches, worker.batch_lock, worker.handle, app.consumer.handled)

    @app.agent(edges, name="receive")
    async def receive(batches):
        """The same transactions as their receivers see them (co-partitioned with the input)."""
        await handled(batches, worker.batch_lock, worker.handle_edges, app.consumer.handled)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        await worker.release({tp.partition for tp in revoked if tp.topic == input_topic})
        # The next owner recovers the checkpoint from the changelog: it must be there.
        await app.producer.flush()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs) -> None:
        # Faust skips the revocation callbacks when the worker itself stops: checkpoint
        # here, before its producer's final flush, so a clean scale-in loses no learning.
        # The batch in flight first; one the agent still had is checkpointed after it
        # (`Worker.closing`): a hand-over lost 1,298 events of learning once.
        worker.closing = True
        async with worker.batch_lock:
            await worker.release({partition for _, partition in worker.models})

    @app.timer(app.settings.state_sweep_interval_seconds)
    async def enforce_bounds() -> None:
        if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
            return
        await worker.sweep(frozenset(
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == input_topic))
