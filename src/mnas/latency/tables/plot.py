"""The validation scatter plot: predicted against measured latency, with the +-10% band."""

from __future__ import annotations

import os
from pathlib import Path

from mnas.latency.tables.validate import Validation
from mnas.paths import write_via


def scatter(v: Validation, path: str | os.PathLike[str], title: str = "") -> Path:
    import matplotlib  # lazy: plotting is optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(v.measured_ms, v.predicted_ms, s=12)
    lo = min(v.measured_ms + v.predicted_ms) * 0.95
    hi = max(v.measured_ms + v.predicted_ms) * 1.05
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], alpha=0.15, label="±10%")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"{title}\nMAPE {v.mape:.1f}%  tau {v.kendall_tau:.2f}  ±10% {v.within_10:.0f}%", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_via(out, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)
    return out
