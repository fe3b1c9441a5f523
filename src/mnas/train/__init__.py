"""Training: the proxy that scores a candidate, full training with recipes, checkpoints.

Split by concern, the way timm splits its training parts:
- `settings`: the training configs, `FitConfig` (full and supernet training) and `ProxyConfig`
  (the search config's `proxy` section), strict pydantic models;
- `recipes`: training recipes as data, `recipe_for(resolution)`, each config turned into a
  `Recipe` once (`run_recipe`, `proxy_recipe`), and the one learning-rate schedule function;
- `engine`: model + optimiser + schedule + EMA on a device, built from a recipe by the one
  `build_engine`; epochs (`Engine.train_epoch`, the one training loop), evaluation;
- `proxy`: `train_proxy`, the short run a search calls for every candidate;
- `fit`: full training with checkpoints, exact resume, progress and metrics;
- `checkpoint`: reading and writing checkpoints (as data, never as code);
- `evaluate`: a saved model's top-1 on its test split;
- `progress`, `distributed` (torchrun + DDP, rank 0 writes).

This file imports nothing, so `settings` can be read without loading torch.
"""
