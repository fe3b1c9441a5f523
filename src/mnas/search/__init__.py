"""The search: what a run is made of, and the loop that runs it.

- `config`: the search YAML as strict pydantic models (`load_config`);
- `trial`: the trial record; `store`: the SQLite run store (trials + strategy state in one
  transaction); `salvage`: reading a damaged store into a new run;
- `loop`: `start_search` / `resume_search` (prepare, ask -> evaluate -> reward -> store -> tell);
- `accuracy`: the `AccuracyModel` seam (proxy training or a supernet) and its factory; `rungs`:
  successive halving; `evaluation`: a trial's latency and accuracy halves;
- `local` and `ray_executor`: executors, which only move `evaluate(arch, config) -> Trial` calls
  around; `hooks`, `progress`;
- `trust`: how far to trust the ranking; `report`: plots and the leaderboard, read from the store.

This file imports nothing, so reading a config or a store does not load torch.
"""
