"""Observability of the data plane: a record per request, read by sinks at its end."""

from kanal.gateway.telemetry._hub import Sink, Telemetry
from kanal.gateway.telemetry._record import RequestRecord
from kanal.gateway.telemetry._setup import build_sinks

__all__ = ["RequestRecord", "Sink", "Telemetry", "build_sinks"]
