"""Platform-aware latency: measure on real runtimes with a disciplined protocol (relative to a
reference network timed in the same processes), cache every number, and predict from a layer
lookup table once a target has been profiled.

- `target`: `Target`, everything that changes a latency number, with its fingerprint;
- `model`: the seam the search, the report and the executors use (`LatencyModel`:
  `MeasuredLatency`, `TableLatency`, built by `latency_model`);
- `measure/`: measuring for real (`protocol`, `measuring`, `session`, `worker`, `result`,
  `cache`, `exporter`, `lifetime`, `sample`);
- `tables/`: lookup tables (`units`, `packs`, `calibration`, `predict`, `build`, `validate`, `plot`);
- `backends/`: the runtimes (`registry`, `base`, one module each).

This file imports nothing: a measuring worker loads only what it uses.
"""
