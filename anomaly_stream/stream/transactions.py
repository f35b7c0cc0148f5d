"""exactly_once across rebalances: Faust's per-partition transactions, ended and begun at the right time.

faust-streaming 0.15.3 keeps one transactional producer per input partition
(EOS v1, transactional id `{app id}-{topic group}-{partition}`) and gets three
things wrong when partitions move between live workers
(https://github.com/faust-streaming/faust/issues/323):

- It stops the producers of revoked partitions only if they are not now
  standbys (`TransactionManager._tps_to_active_tpgs` filters on
  `assignor.is_standby`). Faust's assignor gives a worker standby copies of
  every topic of a co-partitioned group, the input topic included, so after
  a scale-out the old owner usually *is* a standby of what it lost: its
  producer lived on, was fenced by the new owner, and the next time the
  partition came back the worker sent through the fenced one and crashed
  (`ProducerFenced`).
- It leaves open, across the rebalance, the transactions of batches whose
  acknowledgements it has just forgotten (and begins them again: "Invalid
  state transition IN_TRANSACTION -> IN_TRANSACTION"). A kept partition is
  then read again from its committed offset into the same transaction, so
  its anomalies were committed twice; the open records also held back the
  last stable offset of the changelogs the worker itself then recovered
  (read_committed).

- `Consumer.on_partitions_revoked` forgets the acknowledgements of revoked
  partitions before it commits, so their output went out without their
  offsets; `consumer.BatchingConsumer` commits them first.

`RebalanceSafeTransactions` commits, when partitions are revoked, what is
left (a batch acknowledged after that, the sends of no input offset) and
ends every transaction, stops the producers of every partition no longer
active here, and begins transactions only where none is open. Offsets,
sends and fencing are otherwise Faust's.
"""

from __future__ import annotations

from typing import Iterable

from faust.transport.consumer import TopicPartitionGroup, TransactionManager
from faust.types import TP


class RebalanceSafeTransactions(TransactionManager):
    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await self.flush()
        # The batches acknowledged since the consumer's commit before Faust forgot
        # the acknowledgements (consumer.BatchingConsumer.on_partitions_revoked),
        # if wait_empty's final commit was skipped while a timer commit ran ...
        await self.consumer.force_commit(start_new_transaction=False)
        # ... and then what is still open holds only sends of no input offset (a
        # sweep's tombstones, a periodic checkpoint): committed, not left open.
        for transactional_id, producer in list(self.producer._transaction_producers.items()):
            if producer._txn_manager.is_in_transaction():
                # Faust's commit_transaction drops a producer that turns out fenced.
                await self.producer.commit_transaction(transactional_id)

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP]) -> None:
        keep = self._tps_to_transactional_ids(assigned)
        gone = self._ids(revoked) - keep
        if gone:
            self.log.info("Stopping transactional producers of revoked partitions: %s", sorted(gone))
        for transactional_id in sorted(gone):
            await self.producer.stop_transaction(transactional_id)
        producers = self.producer._transaction_producers
        for transactional_id in sorted(keep):
            producer = producers.get(transactional_id)
            if producer is None or not producer._txn_manager.is_in_transaction():
                await self.producer.maybe_begin_transaction(transactional_id)

    def _ids(self, tps: Iterable[TP]) -> set[str]:
        """Transactional ids of partitions, whatever their role now (revoked ones are nobody's active)."""
        ids = set()
        for tp in tps:
            try:
                group = self.app.assignor.group_for_topic(tp.topic)
            except KeyError:  # a topic no longer subscribed has no producer to stop
                continue
            ids.add(self.transactional_id_format.format(
                tpg=TopicPartitionGroup(tp.topic, tp.partition, group), group_id=self.app.conf.id))
        return ids
