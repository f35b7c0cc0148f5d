"""The OpenAPI 3 document of the query API, served at /api/v1/openapi.json.

The suite fuzzes the running API against it (schemathesis), so it must stay
true to views.py: every route, parameter and status code here is real.
"""


from ..detect.schema import ADDRESS_PATTERN, HASH_PATTERN

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ADDRESS = {"type": "string", "pattern": f"^{ADDRESS_PATTERN}$"}
_HASH = {"type": "string", "pattern": f"^{HASH_PATTERN}$"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "anomaly_stream query API", "version": "1"},
    "paths": {
        "/api/v1/anomalies": {"get": {
            "summary": "Recent anomalies from the buffer, newest first",
            "parameters": [
                {"name": "address", "in": "query", "required": False, "schema": _ADDRESS},
                {"name": "min_score", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 0, "maximum": 1}},
                {"name": "since", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 0, "maximum": 1e12},
                 "description": "unix seconds: only anomalies detected at or after"},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "next_cursor of the previous page"},
            ],
            "responses": {
                "200": _json({"type": "object", "required": ["items", "next_cursor", "partial"], "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Anomaly"}},
                    "next_cursor": {"type": "string", "nullable": True},
                    "partial": {"type": "boolean", "description": "a replica did not answer in time"},
                    "missing_partitions": {"type": "array", "items": {"type": "integer"}}}}),
                "400": _ERROR, "503": _ERROR,
            },
        }},
        "/api/v1/anomalies/{tx_hash}": {"get": {
            "summary": "One anomaly with its explanation",
            "parameters": [{"name": "tx_hash", "in": "path", "required": True, "schema": _HASH}],
            "responses": {"200": _json({"$ref": "#/components/schemas/Anomaly"}),
                          "400": _ERROR, "404": _ERROR, "503": _ERROR},
        }},
        "/api/v1/anomalies/{tx_hash}/feedback": {"post": {
            "summary": "An analyst's verdict on a buffered anomaly (needs Authorization: Bearer <API_WRITE_KEY>)",
            "parameters": [{"name": "tx_hash", "in": "path", "required": True, "schema": _HASH}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["verdict"], "additionalProperties": False,
                "properties": {"verdict": {"type": "string", "enum": ["confirmed", "false_positive"]},
                               "note": {"type": "string", "maxLength": 1000}}}}}},
            "responses": {"202": _json({"type": "object", "required": ["tx_hash", "verdict", "addresses", "at"]}),
                          "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "503": _ERROR},
        }},
        "/api/v1/addresses/{address}": {"get": {
            "summary": "A sender's behavioural profile and recent anomalies",
            "parameters": [{"name": "address", "in": "path", "required": True, "schema": _ADDRESS}],
            "responses": {"200": _json({"type": "object", "required": ["address", "profile", "anomalies"]}),
                          "400": _ERROR, "404": _ERROR, "503": _ERROR},
        }},
        "/api/v1/stats": {"get": {
            "summary": "Throughput, flag rate, feedback precision, thresholds and partitions served, over all replicas",
            "responses": {"200": _json({"type": "object", "required": [
                "throughput_tx_per_s", "flag_rate", "partitions_served", "replicas"], "properties": {
                    "replicas": {"type": "array", "items": {"$ref": "#/components/schemas/Replica"}}}}),
                "503": _ERROR},
        }},
    },
    # With API_READ_KEY set every /api/v1 route but this document wants the bearer token (401 without).
    "security": [{}, {"bearer": []}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Replica": {"type": "object", "required": ["replica", "partitions", "lag", "models"], "properties": {
            "replica": {"type": "string"}, "partitions": {"type": "array", "items": {"type": "integer"}},
            "lag": {"type": "object", "additionalProperties": {"type": "integer"},
                    "description": "consumer lag per input partition this replica owns"},
            "models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelState"}},
        }},
        "ModelState": {"type": "object", "required": [
            "perspective", "partition", "warm", "seen", "flagged", "threshold", "checkpoint_age_seconds",
            "score_histogram"], "properties": {
                "perspective": {"type": "string", "enum": ["sender", "receiver"]},
                "partition": {"type": "integer"}, "warm": {"type": "boolean"},
                "seen": {"type": "integer", "description": "events scored, across restarts"},
                "flagged": {"type": "integer", "description": "anomalies this process published"},
                "threshold": {"type": "number"}, "drift": {"type": "number"},
                "checkpoint_age_seconds": {"type": "number", "nullable": True},
                "score_histogram": {"type": "array", "items": {"type": "number"},
                                    "description": "shares of recent scores in equal bins over [0, 1]"},
            }},
        "Anomaly": {"type": "object", "required": [
            "schema", "tx_hash", "address", "score", "threshold", "explanation", "detected_at"],
            "properties": {
                "schema": {"type": "string"}, "tx_hash": {"type": "string"}, "address": {"type": "string"},
                "score": {"type": "number"}, "threshold": {"type": "number"},
                "detected_at": {"type": "number"},
                "explanation": {"type": "array", "items": {"type": "object"}},
            }},
    }},
}
