"""Platform-aware latency: measure on real runtimes with a disciplined protocol (relative to a
reference network timed in the same processes), cache every number, and predict from a layer
lookup table once a target has been profiled. The seam for the search: `mnas.latency.model`."""

from mnas.latency.cache import LatencyCache
from mnas.latency.protocol import Protocol, measure, measure_many, reference_latency
from mnas.latency.result import LatencyResult, ReferenceLatency
from mnas.latency.target import Target

__all__ = ["Target", "LatencyResult", "ReferenceLatency", "measure", "measure_many", "reference_latency",
           "LatencyCache", "Protocol"]
