"""anomaly_stream: streaming anomaly detection for Ethereum transactions.

Higher scores are more anomalous (River's convention); a transaction is
flagged when its score is above its partition's threshold in force.
"""

__version__ = "0.1.0"
