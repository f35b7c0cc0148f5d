"""Every metric the worker exposes, declared once, with its meaning.

Each replica reports only the partitions it owns and its own counters, so a
`sum` over replicas in Prometheus counts every transaction once.
"""

from prometheus_client import Counter, Gauge, Histogram

TRANSACTIONS_CONSUMED = Counter(
    "transactions_consumed_total", "Input messages taken from the transactions topic.")
TRANSACTIONS_PROCESSED = Counter(
    "transactions_processed_total", "Transactions scored by the model.")
TRANSACTIONS_DEAD_LETTERED = Counter(
    "transactions_dead_lettered_total", "Input messages sent to the dead-letter topic.", ["reason"])
TRANSACTIONS_REKEYED = Counter(
    "transactions_rekeyed_total",
    "Input messages whose key was not their sender, re-published under the sender's key.")
EDGES_PROCESSED = Counter(
    "edges_processed_total", "Edges (transactions as their receivers see them) scored by the receiver models.")
ANOMALIES_PUBLISHED = Counter(
    "anomalies_published_total", "Anomalies published to the anomalies topic, both perspectives.")
BATCH_SECONDS = Histogram(
    "batch_processing_seconds", "Time to handle one partition batch, including its writes.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BATCH_SIZE = Histogram(
    "batch_size_transactions", "Transactions per partition batch.",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000))
ANOMALY_SCORE = Histogram(
    "anomaly_score", "Half-space-tree scores of a sample (1 in 16) of transactions, per perspective.",
    ["perspective"], buckets=tuple(i / 20 for i in range(1, 21)))
ANOMALY_BUFFER_SIZE = Gauge(
    "anomaly_buffer_size", "Anomalies held in this replica's partitions of the buffer.")
ADDRESS_PROFILES = Gauge(
    "address_profiles", "Sender profiles held in this replica's partitions.")
STATE_EXPIRED = Counter(
    "state_entries_expired_total", "Table entries deleted by the TTL or size bound.", ["table"])
MODEL_THRESHOLD = Gauge(
    "model_threshold", "Score threshold in force, per perspective and partition.", ["perspective", "partition"])
MODEL_THRESHOLD_DRIFT = Gauge(
    "model_threshold_drift",
    "How far the score quantile behind the threshold moved from its slow reference (a drift alarm: "
    "a flood or a change of traffic moves it).", ["perspective", "partition"])
MODEL_EVENTS_SEEN = Gauge(
    "model_events_seen", "Events the partition's model has scored, across restarts.",
    ["perspective", "partition"])
MODEL_CHECKPOINTS_REJECTED = Counter(
    "model_checkpoints_rejected_total",
    "Model checkpoints refused: the partition started a fresh model. reason: forged (the signature does not "
    "verify or is missing), unsupported (another format or version, a pickle included), corrupt.", ["reason"])
STATE_REBUILDS = Counter(
    "state_bounds_rebuilds_total", "Times the bounded tables were re-indexed after a recovery.")
MODEL_CHECKPOINT_AGE = Gauge(
    "model_checkpoint_age_seconds", "Seconds since the partition's model was last checkpointed.",
    ["perspective", "partition"])
WATCHLIST_ENTRIES = Gauge(
    "watchlist_entries", "Addresses on at least one watch-list, as this replica's global table holds them.")
WATCHLIST_UPDATES = Counter(
    "watchlist_updates_total", "Watchlist topic records copied into the global table (applied) or refused.",
    ["result"])
FEEDBACK_UPDATES = Counter(
    "feedback_updates_total", "Feedback topic records applied by this replica, or refused.", ["result"])
FEEDBACK_ENTRIES = Gauge("feedback_entries", "Analysts' verdicts this replica holds.")
FEEDBACK_VERDICTS = Gauge(
    "feedback_verdicts", "Verdicts of the last FEEDBACK_TTL_SECONDS, by verdict.", ["verdict"])
FEEDBACK_PRECISION = Gauge(
    "feedback_precision_ratio", "confirmed / (confirmed + false_positive) over the verdicts held.")
ANOMALIES_SUPPRESSED = Counter(
    "anomalies_suppressed_total",
    "Model flags not raised because an analyst marked the address a false positive.", ["perspective"])

# Serving
HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered, by route template.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request.", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
REDIS_CACHE_REQUESTS = Counter(
    "redis_cache_requests_total", "Cache look-ups of the query views.", ["result"])
REDIS_CACHE_ERRORS = Counter(
    "redis_cache_errors_total", "Redis calls that failed or timed out (the view answered from tables).",
    ["operation"])
REDIS_CACHE_HIT_RATE = Gauge(
    "redis_cache_hit_rate", "Share of cache look-ups that hit, since start (this replica).")
KAFKA_CONSUMER_LAG = Gauge(
    "kafka_consumer_lag", "Messages between the partition's end and this replica's position.",
    ["topic", "partition"])


ENRICHMENT = Counter(
    "enrichment_total", "Anomalies enriched with on-chain facts, by result (ok, error, skipped).",
    ["result"])

# Ethereum node and ingestion
ETH_BLOCKS_BEHIND_HEAD = Gauge(
    "eth_blocks_behind_head",
    "Blocks between the chain head and the last published block (includes the confirmation depth).")
ETH_RPC_LATENCY = Histogram(
    "eth_rpc_latency_seconds", "Duration of one JSON-RPC request or batch, by method.", ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ETH_RPC_ERRORS = Counter(
    "eth_rpc_errors_total", "Failed JSON-RPC attempts, by method and kind (each retry counts).",
    ["method", "kind"])
INGEST_BLOCKS_PUBLISHED = Counter(
    "ingest_blocks_published_total", "Blocks whose transactions were committed to the input topic.")
INGEST_TRANSACTIONS_PUBLISHED = Counter(
    "ingest_transactions_published_total", "Transactions committed to the input topic.")
INGEST_REORGS = Counter(
    "ingest_reorgs_total", "Reorgs deeper than the confirmation depth (published blocks orphaned).")
INGEST_ORPHANED_BLOCKS = Counter(
    "ingest_orphaned_blocks_total", "Published blocks that a reorg later orphaned.")
INGEST_INPUTS_TRUNCATED = Counter(
    "ingest_inputs_truncated_total", "Transactions whose calldata was cut to fit the input topic's message size.")
INGEST_TOKEN_BALANCES = Counter(
    "ingest_token_balances_total",
    "Token balances read for token transfers (ownerTokenBalance), by result: read, unreadable (the call "
    "reverted or answered no uint256), failed (the node did not answer; published without).", ["result"])

# Alert delivery (`anomaly-stream notify`)
NOTIFY_DELIVERIES = Counter(
    "notify_deliveries_total",
    "Alerts handed to a sink, by result: delivered, or failed (bounded tries spent or a permanent error).",
    ["sink", "result"])
NOTIFY_RETRIES = Counter(
    "notify_retries_total", "Delivery attempts that failed and were tried again (after backoff).", ["sink"])
NOTIFY_DEDUPLICATED = Counter(
    "notify_deduplicated_total",
    "Anomalies not alerted because their alert key was alerted within the dedup window.")
NOTIFY_DEAD_LETTERS = Counter(
    "notify_dead_letters_total", "Undeliverable alerts written to the notify dead-letter topic.", ["sink"])
NOTIFY_DELIVERY_SECONDS = Histogram(
    "notify_delivery_seconds", "Time to deliver one alert to one sink, retries and rate-limit waits included.",
    ["sink"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
