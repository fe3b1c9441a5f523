"""The MnasNet controller: an LSTM policy over the decisions, trained with PPO.

MnasNet (Tan et al., CVPR 2019, Sec. 4.2) uses "the same RNN controller as NASNet" (Zoph et al.,
CVPR 2018, arXiv:1707.07012: a one-layer LSTM of 100 units, one softmax per decision, the chosen
token's embedding fed back, uniform init in [-0.1, 0.1], Adam, an entropy bonus) and updates it
with PPO (Schulman et al. 2017, arXiv:1707.06347: the clipped ratio objective, clip 0.2, several
epochs per batch). A search is one-step episodes: the advantage is the reward against a baseline,
no value head.

The papers train for thousands of samples; a search here has hundreds, and with the papers'
settings the controller was no better than random search. The knobs this class adds (`advantage`
ranks, a `window` of earlier results, `entropy_weight`, `unique` proposals with a rising
temperature, a `top_k` priority queue, an `explore` share of uniform samples; the gradient norm
clipped to 1 and the log-ratio to +-20) and every default were chosen on
benchmarks/search_strategies.py and benchmarks/ppo_tuning.py; what each knob does, what was tried
and what it won is in docs/benchmarks/search_ppo_tuning.md ("How the defaults were chosen"). The
papers' settings remain available as knobs (`PPOKnobs`).

`ask` returns each proposal's log-probability (`Proposal.logp`), which must come back with the
trial (`trial.logp`; mnas.search.store keeps it), so results can come back in any order, even
after the policy was updated, and a resumed search needs nothing from memory. Failed trials are
skipped by default, or get `failed_reward` when that is set.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mnas.strategies.base import CategoricalSpace, Float, Int, Strategy, StrategyKnobs
from mnas.strategies.random import as_tuple

LOG_RATIO_LIMIT = 20.0
MAX_GRAD_NORM = 1.0  # the usual PPO safeguard (e.g. 0.5 in Stable-Baselines3); keeps Adam's first steps sane


class PPOKnobs(StrategyKnobs):
    """The controller's size and PPO's settings (see the module doc for what each one does).

    Defaults: the controller and `clip` are the papers'; `lr`, `entropy_weight`, `advantage`,
    `window` and `unique` were chosen on benchmarks/search_strategies.py (4 of its 24 settings,
    10 seeds), where the papers' values (lr 3.5e-4, entropy 1e-5, EMA baseline, no window) were
    no better than random search at 500 trials; `top_k`, `top_k_weight` and `temperature_step`
    on all 24 settings with seeds 0..19, confirmed on seeds 20..39
    (docs/benchmarks/search_ppo_tuning.md); `explore` on all 24 settings, seeds 0..19, against
    `batch_size` 8 and `explore` 0.25. `{top_k: 0, max_temperature: 1, explore: 0}` is the
    controller before those three changes.
    """

    hidden: Int = Field(default=100, ge=1, le=4096)
    init_range: Float = Field(default=0.1, gt=0)
    lr: Float = Field(default=0.02, gt=0, le=10)
    clip: Float = Field(default=0.2, gt=0, le=1)
    epochs: Int = Field(default=4, ge=1, le=1000)
    batch_size: Int = Field(default=16, ge=1)
    window: Int | None = Field(default=32, ge=1)
    advantage: Literal["rank", "zscore", "ema", "elite"] = "rank"
    elite_fraction: Float = Field(default=0.25, gt=0, le=1)
    baseline_decay: Float = Field(default=0.95, ge=0, le=1)
    entropy_weight: Float = Field(default=0.01, ge=0)
    unique: bool = True
    resample: Int = Field(default=32, ge=1, le=10_000)
    temperature_step: Float = Field(default=2.0, gt=1, le=100)
    max_temperature: Float = Field(default=50.0, ge=1, le=1e6)
    failed_reward: Float | None = None
    top_k: Int = Field(default=8, ge=0, le=10_000)
    top_k_weight: Float = Field(default=4.0, ge=0)
    explore: Float = Field(default=0.125, ge=0, le=1)


class Controller(nn.Module):
    """Autoregressive LSTM policy: step i reads the embedding of token i-1 and emits token i."""

    def __init__(self, sizes: Sequence[int], hidden: int = 100) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.hidden = hidden
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.cell = nn.LSTMCell(hidden, hidden)
        self.embeddings = nn.ModuleList(nn.Embedding(k, hidden) for k in self.sizes)
        self.heads = nn.ModuleList(nn.Linear(hidden, k) for k in self.sizes)

    def reset_parameters(self, init_range: float, generator: torch.Generator) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_range, init_range, generator=generator)

    def forward(
        self, n: int, tokens: torch.Tensor | None = None, generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample `n` token lists (or score the given [n, D] `tokens`).

        Returns tokens [n, D], their total log-probability [n] and total entropy [n], both under
        the policy itself; `temperature` > 1 flattens only the distribution tokens are drawn from.
        """
        x = self.start.expand(n, -1)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        chosen, logp, entropy = [], torch.zeros(n), torch.zeros(n)
        for i, head in enumerate(self.heads):
            h, c = self.cell(x, state)
            state = (h, c)
            log_probs = torch.log_softmax(head(h), dim=-1)
            if tokens is None:
                draw = log_probs if temperature == 1.0 else torch.log_softmax(log_probs / temperature, dim=-1)
                a = torch.multinomial(draw.exp(), 1, generator=generator).squeeze(1)
            else:
                a = tokens[:, i]
            chosen.append(a)
            logp = logp + log_probs.gather(1, a.unsqueeze(1)).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
            x = self.embeddings[i](a)
        return torch.stack(chosen, 1), logp, entropy


# (tokens, behaviour log-prob, reward, EMA baseline before this reward or None)
Sample = tuple[list[int], float, float, float | None]


class PPOStrategy(Strategy):
    """The paper's RL controller: LSTM policy + PPO, with reward shaping and exploration."""

    name = "ppo"
    Knobs = PPOKnobs
    knobs: PPOKnobs

    def __init__(self, space: CategoricalSpace, seed: int = 0, **knobs: Any) -> None:
        super().__init__(space, seed, **knobs)
        self.generator = torch.Generator().manual_seed(self.seed % 2**63)
        self.rng = random.Random(self.seed)  # the uniform fallback of `unique`
        self.controller = Controller(self.sizes, self.knobs.hidden)
        self.controller.reset_parameters(self.knobs.init_range, self.generator)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.knobs.lr)
        self.baseline: float | None = None
        self.buffer: list[Sample] = []  # results not yet learned from
        self.memory: list[Sample] = []  # the last `window` results, which each update learns from
        self.best: list[tuple[float, list[int]]] = []  # the `top_k` best (reward, tokens) so far
        self.updates = 0

    # -- ask / tell ------------------------------------------------------------------------
    def _propose(self, n: int) -> list[tuple[list[int], float | None]]:
        # `explore`: a fixed share of all proposals so far is uniform, however the asks are sized.
        share = self.knobs.explore
        uniform = round((self.asked + n) * share) - round(self.asked * share)
        if not self.knobs.unique:
            with torch.no_grad():
                tokens, logp, _ = self.controller(n - uniform, generator=self.generator)
            out = [(row, float(lp)) for row, lp in zip(tokens.tolist(), logp.tolist(), strict=True)]
            return out + self._scored([self.random_tokens(self.rng) for _ in range(uniform)])
        return self._propose_new(n - uniform, uniform)

    def _scored(self, rows: list[list[int]]) -> list[tuple[list[int], float | None]]:
        """Samples not drawn from the policy, with the policy's log-probability of each."""
        if not rows:
            return []
        with torch.no_grad():
            logp = self.controller(len(rows), tokens=torch.tensor(rows, dtype=torch.long))[1]
        return [(row, float(lp)) for row, lp in zip(rows, logp.tolist(), strict=True)]

    def _propose_new(self, n: int, uniform: int = 0) -> list[tuple[list[int], float | None]]:
        """`n` policy samples and `uniform` uniform samples of architectures not proposed before
        (see `unique`)."""
        out: list[tuple[list[int], float | None]] = []
        batch: set[str] = set()
        temperature = 1.0
        while len(out) < n and temperature <= self.knobs.max_temperature:
            draws, limit = 0, n * self.knobs.resample
            while len(out) < n and draws < limit:
                size = min(limit - draws, max(4 * (n - len(out)), 16))
                with torch.no_grad():
                    tokens, logp, _ = self.controller(size, generator=self.generator, temperature=temperature)
                draws += size
                for row, lp in zip(tokens.tolist(), logp.tolist(), strict=True):
                    if len(out) < n and self.is_new(row, batch):
                        out.append((row, float(lp)))
            # The policy keeps drawing what was seen: widen it around what it prefers.
            temperature *= self.knobs.temperature_step
        # The `explore` share, and, when even a flat policy finds nothing new (a nearly exhausted
        # space), the rest: uniform samples.
        return out + self._scored([self.new_random_tokens(self.rng, batch) for _ in range(n + uniform - len(out))])

    def _observe(self, trial_id: int, tokens: list[int], trial: Any) -> None:
        logp = getattr(trial, "logp", None)
        if logp is None or not math.isfinite(float(logp)):
            raise ValueError(f"tell() got trial {trial_id} without its proposal's log-probability "
                             "(trial.logp = Proposal.logp from ask()); ppo needs it")
        reward = self.reward_of(trial)
        base = self.baseline  # the advantage compares with *previous* rewards (NASNet)
        if reward is None:
            if self.knobs.failed_reward is None:
                return
            reward = float(self.knobs.failed_reward)
        else:
            # Only real results move the baseline, so a burst of failures cannot drag it down
            # and make every later success look good.
            d = self.knobs.baseline_decay
            self.baseline = reward if self.baseline is None else d * self.baseline + (1 - d) * reward
        self.buffer.append((list(tokens), float(logp), float(reward), base))

    def _after_tell(self) -> None:
        size = self.knobs.batch_size
        window = self.knobs.window or size
        while len(self.buffer) >= size:
            batch, self.buffer = self.buffer[:size], self.buffer[size:]
            self.memory = (self.memory + batch)[-max(window, size):]
            if self.knobs.top_k:
                ranked = sorted(self.best + [(b[2], b[0]) for b in batch], key=lambda rt: -rt[0])
                self.best = ranked[:self.knobs.top_k]
            self._update(self.memory)

    def advantages(self, batch: Sequence[Sample]) -> torch.Tensor:
        """Advantages of one update batch, by the `advantage` knob."""
        rewards = torch.tensor([b[2] for b in batch], dtype=torch.float64)
        mode = self.knobs.advantage
        if mode == "rank":
            # Centered ranks in [-0.5, 0.5]; ties share their mean rank.
            order = rewards.argsort(stable=True)
            ranks = torch.empty_like(rewards)
            ranks[order] = torch.arange(len(batch), dtype=torch.float64)
            for value in rewards.unique():
                tied = rewards == value
                ranks[tied] = ranks[tied].mean()
            adv = ranks / max(len(batch) - 1, 1) - 0.5
        elif mode == "elite":
            # Risk-seeking policy gradient (Petersen et al., ICLR 2021): only the batch's best
            # `elite_fraction` are reinforced, by how far they beat the (1 - fraction) quantile,
            # which optimises the best result found rather than the mean.
            q = float(torch.quantile(rewards, 1 - self.knobs.elite_fraction))
            spread = float(rewards.std()) if len(batch) > 1 else 0.0
            adv = (rewards - q).clamp(min=0.0)
            adv = adv / spread if spread > 1e-12 else adv * 0.0
        elif mode == "zscore":
            adv = rewards - rewards.mean()
            std = float(adv.pow(2).mean().sqrt())
            adv = adv / std if std > 1e-12 else adv * 0.0
        else:  # "ema"
            mean = float(rewards.mean())  # stands in for the baseline before the first result
            adv = rewards - torch.tensor([mean if b[3] is None else b[3] for b in batch], dtype=torch.float64)
            rms = float(adv.pow(2).mean().sqrt())
            if rms > 1e-12:
                adv = adv / rms
        return adv.float()

    def _update(self, batch: list[Sample]) -> None:
        """PPO-clip epochs over one batch of (tokens, behaviour log-prob, reward, baseline)."""
        tokens = torch.tensor([b[0] for b in batch], dtype=torch.long)
        old = torch.tensor([b[1] for b in batch], dtype=torch.float32)
        adv = self.advantages(batch)
        clip = self.knobs.clip
        # The best results so far (`top_k`) ride along in the same forward pass.
        n = len(batch)
        scored = torch.cat([tokens, torch.tensor([t for _, t in self.best], dtype=torch.long).view(-1, tokens.shape[1])])
        for _ in range(self.knobs.epochs):
            _, logp_all, entropy_all = self.controller(len(scored), tokens=scored)
            logp, entropy, top_logp = logp_all[:n], entropy_all[:n], logp_all[n:]
            # The log-ratio is bounded so that a sample the policy has since made far likelier
            # (a uniform fallback of `unique`) cannot overflow exp() into inf * 0 = NaN.
            ratio = torch.exp((logp - old).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
            loss = -surrogate.mean() - self.knobs.entropy_weight * entropy.mean()
            if len(top_logp):
                loss = loss - self.knobs.top_k_weight * top_logp.mean()
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.controller.parameters(), MAX_GRAD_NORM)
            self.optimizer.step()
        self.updates += 1

    # -- introspection -----------------------------------------------------------------------
    def probabilities(self) -> list[list[float]]:
        """Greedy-path per-decision probabilities (for reports and tests of what was learned)."""
        with torch.no_grad():
            x = self.controller.start
            state = None
            out = []
            for i, head in enumerate(self.controller.heads):
                h, c = self.controller.cell(x, state)
                state = (h, c)
                p = torch.softmax(head(h), -1)[0]
                out.append(p.tolist())
                x = self.controller.embeddings[i](p.argmax().view(1))
        return out

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "controller": {k: v.detach().clone() for k, v in self.controller.state_dict().items()},
            "optimizer": _clone(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
            "rng": self.rng.getstate(),
            "baseline": self.baseline,
            "buffer": [(list(t), lp, r, b) for t, lp, r, b in self.buffer],
            "memory": [(list(t), lp, r, b) for t, lp, r, b in self.memory],
            "updates": self.updates,
            "best": [(r, list(t)) for r, t in self.best],
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.knobs.lr)
        self.optimizer.load_state_dict(_clone(state["optimizer"]))
        self.generator.set_state(state["generator"].clone())
        self.rng.setstate(as_tuple(state["rng"]))
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.buffer = [(list(t), float(lp), float(r), None if b is None else float(b))
                       for t, lp, r, b in state["buffer"]]
        self.memory = [(list(t), float(lp), float(r), None if b is None else float(b))
                       for t, lp, r, b in state["memory"]]
        self.updates = int(state["updates"])
        self.best = [(float(r), list(t)) for r, t in state.get("best", [])]


def _clone(obj: Any) -> Any:
    """Deep copy of a (nested) state dict, cloning tensors so later steps never alias it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone(v) for v in obj)
    return obj
