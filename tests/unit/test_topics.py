"""`topics.create_topic` against a fake admin client: created, already there, refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from anomaly_stream.stream.topics import create_topic


class FakeAdmin:
    def __init__(self, answer):
        self.answer = answer
        self.requests = []

    async def create_topics(self, new_topics):
        self.requests.append(new_topics)
        if isinstance(self.answer, Exception):
            raise self.answer
        return SimpleNamespace(topic_errors=[(t.name, self.answer, "message") for t in new_topics])


async def test_a_new_topic_is_created_with_partitions_replication_and_configs():
    admin = FakeAdmin(0)
    assert await create_topic(admin, "t", 3, 1, {"cleanup.policy": "compact"}) is True
    [[topic]] = admin.requests
    assert (topic.name, topic.num_partitions, topic.replication_factor) == ("t", 3, 1)
    assert topic.topic_configs == {"cleanup.policy": "compact"}


async def test_an_existing_topic_is_no_error():
    assert await create_topic(FakeAdmin(TopicAlreadyExistsError.errno), "t", 1, 1) is False
    assert await create_topic(FakeAdmin(TopicAlreadyExistsError()), "t", 1, 1) is False


async def test_a_refused_creation_raises():
    with pytest.raises(InvalidReplicationFactorError):
        await create_topic(FakeAdmin(InvalidReplicationFactorError.errno), "t", 1, 3)
