"""Training: the proxy that scores a candidate, full training with recipes, checkpoints.

Split by concern, the way timm splits its training parts:
- `settings`: `ProxyConfig`, the proxy's settings (the search config's `proxy` section);
- `recipes`: training recipes as data and the one learning-rate schedule function;
- `engine`: model + optimiser + schedule + EMA on a device (`build_engine`), epochs, evaluation;
- `proxy`: `train_proxy`, the short run a search calls for every candidate;
- `fit`: full training with checkpoints, exact resume, progress and metrics;
- `checkpoint`: reading and writing checkpoints (as data, never as code);
- `evaluate`: a saved model's top-1 on its test split;
- `progress`, `distributed` (torchrun + DDP, rank 0 writes).

This file imports nothing, so `settings` can be read without loading torch.
"""
