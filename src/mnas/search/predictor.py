"""A learned predictor of accuracy, fitted on the search's own results: the free first rung.

`Predictor` learns, from the accuracy this search's candidates reached at one rung, to predict a
new candidate's from its decisions: a ridge regression on the space's one-hot tokens.
`mnas.search.accuracy.PredictedAccuracy` puts it as rung 0 in front of another accuracy model's
rungs (the proxy, a supernet, a table): rung k >= 1 is the inner model's rung k - 1, so the loop's
successive halving (`mnas.search.rungs`) needs nothing new: it keeps the best-predicted
`proxy.keep` of the candidates (by reward: predicted accuracy with the candidate's real latency)
and stops the others before any training. A candidate stopped at rung 0 is told to the strategy
like any candidate stopped below the top (`mnas.search.loop.RUNG_GAP`).

Rules that keep it honest and reproducible:

- It learns only from what the search has told its strategy (`observe`, called by the loop before
  each batch is asked and with every told trial on a resume), so the predictions of a batch do not
  depend on the order its results arrive in, and a resumed search predicts as the first session did.
- Until `min_results` candidates have a result to learn from, there is no prediction: a new
  candidate starts at rung 1 (`first_rung`), so every candidate is trained, and successive halving
  compares predictions only with predictions (the loop decides the free rung in a study of its
  own: `SearchRun.schedule`).
- Its quality is measured, not assumed: `describe` gives the Kendall tau of prediction against
  the trained accuracy over the candidates that were trained after a prediction (the promoted
  ones, a narrower range than all candidates), and the report's "rung 0 vs rung 1" line gives the
  same from the store.
- Rung 0 runs in the search's process (`AccuracyModel.in_driver`), where the fitted regression
  lives; the inner model's rungs run wherever they ran without it.

Deterministic: a closed-form ridge (numpy), no seed, no iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from mnas.search.config import PredictorConfig


class Ridge:
    """Ridge regression on one-hot categorical tokens (unpenalised intercept), in closed form."""

    def __init__(self, sizes: Sequence[int], alpha: float) -> None:
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.cumsum([0, *self.sizes[:-1]])
        self.alpha = float(alpha)
        self.weights: np.ndarray | None = None
        self.mean_x: np.ndarray | None = None
        self.mean_y = 0.0

    def features(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        x = np.zeros((len(tokens), sum(self.sizes)))
        for row, t in enumerate(tokens):
            x[row, self.offsets + np.asarray(t, dtype=int)] = 1.0
        return x

    def fit(self, tokens: Sequence[Sequence[int]], y: Sequence[float]) -> Ridge:
        x = self.features(tokens)
        target = np.asarray(y, dtype=float)
        self.mean_x, self.mean_y = x.mean(axis=0), float(target.mean())
        a = x - self.mean_x
        self.weights = np.linalg.solve(a.T @ a + self.alpha * np.eye(a.shape[1]), a.T @ (target - self.mean_y))
        return self

    def predict(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        assert self.weights is not None and self.mean_x is not None, "fit first"
        return (self.features(tokens) - self.mean_x) @ self.weights + self.mean_y


class Predictor:
    """Learns accuracy at rung `fit_rung` from the search's results (`observe`) once
    `settings.min_results` candidates have one; predicts any architecture of `space` after that."""

    def __init__(self, settings: PredictorConfig, fit_rung: int, space: Any = None) -> None:
        self.settings, self.fit_rung, self.space = settings, fit_rung, space
        self.learned: dict[str, tuple[list[int], float]] = {}  # arch id -> (tokens, accuracy at the fit rung)
        self.predicted: dict[str, float] = {}  # arch id -> its prediction, as the search stored it (rung 0)
        self.measured: dict[str, float] = {}  # arch id -> its accuracy at the fit rung
        self.ridge: Ridge | None = None
        self.fits = 0  # how many times it was fitted

    @property
    def ready(self) -> bool:
        return self.ridge is not None

    def tokens(self, arch: Any) -> list[int] | None:
        """`arch`'s decisions in the space; None outside it (a reference network) or without a space."""
        if self.space is None:
            return None
        try:
            return [int(t) for t in self.space.encode(arch)]
        except Exception:
            return None

    def observe(self, results: Sequence[tuple[Any, int, float]]) -> None:
        """Finished rungs (architecture, rung, accuracy); refits once there are enough."""
        for arch, rung, accuracy in results:
            if rung == 0:
                self.predicted[arch.id] = float(accuracy)
            elif rung == self.fit_rung:
                self.measured[arch.id] = float(accuracy)
                tokens = self.tokens(arch)
                if tokens is not None:
                    self.learned[arch.id] = (tokens, float(accuracy))
        if len(self.learned) >= self.settings.min_results:
            self.ridge = self.ridge or Ridge(self.space.decision_sizes(), self.settings.alpha)
            self.ridge.fit([t for t, _ in self.learned.values()], [a for _, a in self.learned.values()])
            self.fits += 1

    def predict(self, arch: Any) -> float | None:
        """The predicted accuracy (a fraction, clipped to [0, 1]); None: not ready, or not in the space."""
        tokens = self.tokens(arch)
        if self.ridge is None or tokens is None:
            return None
        return float(np.clip(self.ridge.predict([tokens])[0], 0.0, 1.0))

    def quality(self) -> tuple[float | None, int]:
        """Kendall tau of the prediction against the measured accuracy at the fit rung, over the
        candidates that have both (those trained after a prediction: the promoted ones), and their
        number; tau is None below 2 of them."""
        both = [i for i in self.predicted if i in self.measured]
        if len(both) < 2:
            return None, len(both)
        tau = kendalltau([self.predicted[i] for i in both], [self.measured[i] for i in both])[0]
        return (float(tau) if np.isfinite(tau) else None), len(both)
