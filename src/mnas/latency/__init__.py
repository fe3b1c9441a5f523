"""Platform-aware latency: measure on real runtimes with a disciplined protocol, cache every
number, and predict from a layer lookup table once a target has been profiled."""

from mnas.latency.cache import LatencyCache
from mnas.latency.protocol import Protocol, measure, measure_many
from mnas.latency.result import LatencyResult
from mnas.latency.target import Target

__all__ = ["Target", "LatencyResult", "measure", "measure_many", "LatencyCache", "Protocol"]
