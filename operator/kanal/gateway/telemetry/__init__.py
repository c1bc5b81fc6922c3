"""Observability of the data plane: a record per request, read by sinks at its end."""

from kanal.gateway.telemetry._accesslog import configure_logging
from kanal.gateway.telemetry._hub import Sink, Telemetry
from kanal.gateway.telemetry._metrics import exposition
from kanal.gateway.telemetry._record import RequestRecord
from kanal.gateway.telemetry._setup import build_sinks
from kanal.gateway.telemetry._usage import GROUPS as USAGE_GROUPS
from kanal.gateway.telemetry._usage import UsageSink

__all__ = [
    "USAGE_GROUPS",
    "RequestRecord",
    "Sink",
    "Telemetry",
    "UsageSink",
    "build_sinks",
    "configure_logging",
    "exposition",
]
