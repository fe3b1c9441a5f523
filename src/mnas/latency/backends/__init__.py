"""The runtimes latency is measured on: one module each, one line each in the registry.

- `registry`: backend name -> the module defining it (`register_backend` adds one at run time);
- `base`: the `Backend` seam every runtime plugs into, `get_backend(name)`, the local worker;
- `litert`, `ort` (onnxruntime), `torch_eager`, `android` (+ `android_output`, which reads
  `benchmark_model`'s output): one module each, defining `BACKEND`.

Modules are imported on first use only, so a worker process loads just the runtime it measures.
"""
