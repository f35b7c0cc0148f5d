"""Kafka security settings and the one place they become client arguments (anomaly_stream.stream.kafka)."""

from __future__ import annotations

import ssl
import subprocess

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from anomaly_stream.settings import Settings, SettingsError
from anomaly_stream.stream.kafka import client_options, faust_credentials

SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "anomaly-stream",
        "KAFKA_SASL_PASSWORD": "s3cret-pw"}


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    """A self-signed certificate and its key, as the CA file and as a client certificate."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kafka",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return {"cert": str(d / "cert.pem"), "key": str(d / "key.pem")}


def test_default_is_plaintext_without_credentials():
    s = Settings()
    assert client_options(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None


def test_sasl_plaintext_options_and_faust_agree():
    s = Settings.from_env(SASL)
    assert client_options(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                 "sasl_plain_username": "anomaly-stream", "sasl_plain_password": "s3cret-pw"}
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    # Faust hands aiokafka exactly what every other client gets.
    assert credentials_to_aiokafka_auth(credentials) == {**client_options(s), "ssl_context": None}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_other_mechanisms(mechanism):
    s = Settings.from_env({**SASL, "KAFKA_SASL_MECHANISM": mechanism})
    assert client_options(s)["sasl_mechanism"] == mechanism
    assert credentials_to_aiokafka_auth(faust_credentials(s))["sasl_mechanism"] == mechanism


def test_sasl_ssl_verifies_the_broker_against_the_ca_file(pem):
    s = Settings.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SSL_CAFILE": pem["cert"]})
    options = client_options(s)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_plain_password"] == "s3cret-pw"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "kafka"),),)]
    auth = credentials_to_aiokafka_auth(faust_credentials(s))
    assert auth["security_protocol"] == "SASL_SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    assert {k: v for k, v in auth.items() if k != "ssl_context"} == \
        {k: v for k, v in options.items() if k != "ssl_context"}


def test_ssl_with_a_client_certificate(pem):
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": pem["cert"],
                           "KAFKA_SSL_CERTFILE": pem["cert"], "KAFKA_SSL_KEYFILE": pem["key"]})
    options = client_options(s)
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


def test_ssl_without_a_ca_file_uses_the_system_cas():
    options = client_options(Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"}))
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_missing_or_bad_tls_files_name_the_variable(tmp_path, pem):
    with pytest.raises(SettingsError, match="KAFKA_SSL_CAFILE.*no such file"):
        client_options(Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nope.pem"}))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(SettingsError, match="KAFKA_SSL_"):
        faust_credentials(Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(junk)}))


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({**SASL, "KAFKA_SASL_PASSWORD": ""}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({**SASL, "KAFKA_SASL_USERNAME": ""}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SECURITY_PROTOCOL is SSL"),
    ({**SASL, "KAFKA_SSL_CAFILE": "/ca.pem"}, "KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"}, "KAFKA_SSL_KEYFILE go together"),
    ({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
    ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM must be one of"),
])
def test_inconsistent_security_settings_fail_at_start_up(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_the_password_is_never_shown():
    s = Settings.from_env(SASL)
    assert "s3cret-pw" not in repr(s) and "anomaly-stream" in repr(s)
    assert "s3cret-pw" not in repr(faust_credentials(s))
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    assert "s3cret-pw" not in str(info.value)
