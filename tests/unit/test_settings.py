"""Tests for settings parsing and validation (anomaly_stream.settings)."""

from __future__ import annotations

import dataclasses

import pytest

from anomaly_stream.settings import Settings, SettingsError


def test_defaults_are_valid():
    s = Settings.from_env({})
    assert s == Settings()
    s.validate()


def test_env_names_cover_every_field():
    names = Settings.env_names()
    assert len(names) == len(dataclasses.fields(Settings))
    assert "KAFKA_INPUT_TOPIC" in names and "TARGET_FLAG_RATE" in names
    assert all(n == n.upper() for n in names)


def test_env_values_are_parsed_to_field_types():
    s = Settings.from_env({
        "KAFKA_INPUT_PARTITIONS": " 12 ", "TARGET_FLAG_RATE": "0.01", "SCORE_FLOOR": "1",
        "KAFKA_INPUT_TOPIC": "eth-tx", "MODEL_WARMUP_EVENTS": "0", "WEB_PORT": "8080",
        "PROCESSING_GUARANTEE": "exactly_once", "TABLE_STORE": "rocksdb://",
    })
    assert s.kafka_input_partitions == 12 and isinstance(s.kafka_input_partitions, int)
    assert s.target_flag_rate == 0.01 and isinstance(s.target_flag_rate, float)
    assert s.score_floor == 1.0 and isinstance(s.score_floor, float)
    assert s.kafka_input_topic == "eth-tx"
    assert s.model_warmup_events == 0
    assert s.web_port == 8080
    assert s.processing_guarantee == "exactly_once"
    assert s.table_store == "rocksdb://"


def test_unknown_and_lower_case_variables_are_ignored():
    assert Settings.from_env({"kafka_input_partitions": "0", "NOT_A_SETTING": "x"}) == Settings()


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("KAFKA_INPUT_TOPIC", "from-os")
    assert Settings.from_env().kafka_input_topic == "from-os"


def test_overrides_win_over_environment():
    s = Settings.from_env({"KAFKA_INPUT_PARTITIONS": "3"}, kafka_input_partitions=5)
    assert s.kafka_input_partitions == 5


@pytest.mark.parametrize(
    "name, value",
    [
        ("KAFKA_INPUT_PARTITIONS", "abc"), ("KAFKA_INPUT_PARTITIONS", "0"), ("KAFKA_INPUT_PARTITIONS", "1.5"),
        ("KAFKA_INPUT_PARTITIONS", ""), ("KAFKA_INPUT_PARTITIONS", "-2"),
        ("KAFKA_TOPIC_REPLICATION_FACTOR", "0"), ("KAFKA_MAX_POLL_RECORDS", "0"),
        ("KAFKA_SESSION_TIMEOUT_SECONDS", "0"), ("KAFKA_SESSION_TIMEOUT_SECONDS", "soon"),
        ("KAFKA_HEARTBEAT_INTERVAL_SECONDS", "30"), ("KAFKA_HEARTBEAT_INTERVAL_SECONDS", "-1"),
        ("KAFKA_PRODUCER_LINGER_MS", "-5"), ("MODEL_WARMUP_EVENTS", "-1"),
        ("COMMIT_INTERVAL_SECONDS", "fast"), ("COMMIT_INTERVAL_SECONDS", "0"),
        ("ANOMALY_BUFFER_TTL_SECONDS", "-1"), ("ANOMALY_BUFFER_MAX_SIZE", "0"),
        ("ADDRESS_STATE_TTL_SECONDS", "0"), ("ADDRESS_STATE_MAX_SIZE", "0"),
        ("STATE_SWEEP_INTERVAL_SECONDS", "0"), ("MODEL_N_TREES", "0"), ("MODEL_HEIGHT", "0"),
        ("MODEL_HEIGHT", "17"), ("MODEL_WINDOW_SIZE", "0"), ("MODEL_CHECKPOINT_INTERVAL_SECONDS", "0"),
        ("TARGET_FLAG_RATE", "0"), ("TARGET_FLAG_RATE", "0.5"), ("TARGET_FLAG_RATE", "nan"),
        ("TARGET_FLAG_RATE", "inf"), ("SCORE_FLOOR", "1.5"), ("SCORE_FLOOR", "-0.1"),
        ("SCORE_FLOOR", "nan"), ("WEB_PORT", "0"), ("WEB_PORT", "http"),
        ("PROCESSING_GUARANTEE", "exactly-once"), ("LOG_LEVEL", "verbose"), ("LOG_LEVEL", "INFO"),
        ("LOG_FORMAT", "xml"), ("TABLE_STORE", "redis://"), ("TABLE_STORE", ""),
    ],
)
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "name",
    ["COMMIT_INTERVAL_SECONDS", "KAFKA_SESSION_TIMEOUT_SECONDS", "ADDRESS_STATE_TTL_SECONDS",
     "STATE_SWEEP_INTERVAL_SECONDS", "MODEL_CHECKPOINT_INTERVAL_SECONDS"],
)
def test_nan_is_rejected_for_positive_floats(name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "nan"})


def test_override_and_replace_are_validated():
    with pytest.raises(SettingsError, match="KAFKA_INPUT_PARTITIONS"):
        Settings.from_env({}, kafka_input_partitions=0)
    with pytest.raises(SettingsError, match="TARGET_FLAG_RATE"):
        Settings().replace(target_flag_rate=0.9)
    assert Settings().replace(kafka_input_partitions=2).kafka_input_partitions == 2


def test_boundary_values_are_accepted():
    s = Settings.from_env({"SCORE_FLOOR": "0", "MODEL_HEIGHT": "16", "KAFKA_PRODUCER_LINGER_MS": "0",
                           "TARGET_FLAG_RATE": "0.499"})
    assert (s.score_floor, s.model_height, s.kafka_producer_linger_ms) == (0.0, 16, 0)


def test_dlq_topic_defaults_to_input_topic_suffix():
    assert Settings().dlq_topic == "transactions-dlq"
    assert Settings.from_env({"KAFKA_INPUT_TOPIC": "eth"}).dlq_topic == "eth-dlq"
    assert Settings.from_env({"KAFKA_INPUT_TOPIC": "eth", "KAFKA_DLQ_TOPIC": "dead"}).dlq_topic == "dead"


@pytest.mark.parametrize(
    "total, partitions, expected",
    [(1000, 8, 125), (1000, 3, 334), (10, 4, 3), (1, 8, 1), (7, 7, 1), (8, 7, 2)],
)
def test_per_partition_bounds_round_up(total, partitions, expected):
    s = Settings.from_env({
        "KAFKA_INPUT_PARTITIONS": str(partitions),
        "ADDRESS_STATE_MAX_SIZE": str(total), "ANOMALY_BUFFER_MAX_SIZE": str(total),
    })
    assert s.address_state_max_per_partition == expected
    assert s.anomaly_buffer_max_per_partition == expected
    assert expected * partitions >= total > (expected - 1) * partitions


def test_settings_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().kafka_input_partitions = 3
