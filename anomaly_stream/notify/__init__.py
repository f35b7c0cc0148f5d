"""Alert delivery: the anomalies topic to webhooks, Slack and the log (`anomaly-stream notify`).

`config` (the TOML file, validated), `alerts` (pure: routing, deduplication,
signatures, Slack blocks, backoff, token bucket), `delivery` (one alert to one
sink over aiohttp, with retries), `notifier` (a partition's records: dedup,
delivery, dead letters, the dedup table), `app` (the Faust app and its agent).
"""
