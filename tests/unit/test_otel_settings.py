"""The gateway's OpenTelemetry settings from the standard OTEL_* variables."""

from __future__ import annotations

import pytest

from kanal.gateway.settings import GatewaySettings, otel_settings

pytestmark = pytest.mark.unit


def settings(**environ: str) -> GatewaySettings:
    return GatewaySettings(**otel_settings(environ))


def test_defaults_are_off() -> None:
    off = settings()
    assert (off.traces_exporter, off.metrics_exporter) == ("none", "none")
    assert off.otlp_url("traces") is None and off.otlp_url("metrics") is None


def test_otlp_urls_from_the_base_endpoint_and_the_signal_ones() -> None:
    base = settings(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://metrics:9000/in",
    )
    assert base.traces_exporter == "otlp"
    assert base.otlp_url("traces") == "http://collector:4318/v1/traces"
    assert base.otlp_url("metrics") == "http://metrics:9000/in"  # its own wins, as given


def test_sdk_disabled_and_bad_values() -> None:
    assert settings(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="otlp").traces_exporter == (
        "none"
    )
    assert settings(OTEL_METRICS_EXPORTER="prometheus").metrics_exporter == "none"
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='jaeger'"):
        settings(OTEL_TRACES_EXPORTER="jaeger")
