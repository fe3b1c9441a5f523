"""The MnasNet controller: an LSTM policy over the decisions, trained with PPO.

MnasNet (Tan et al., CVPR 2019, Sec. 4.2) uses "the same RNN controller as NASNet" and updates it
with Proximal Policy Optimization. The defaults follow NASNet (Zoph, Vasudevan, Shlens, Le,
"Learning Transferable Architectures for Scalable Image Recognition", CVPR 2018,
arXiv:1707.07012, Sec. 3 and Appendix A, as we read it; the values were not re-checked against
a stored copy here):

- a one-layer LSTM with 100 hidden units emitting one categorical decision per step, one
  softmax classifier per decision, the embedding of each chosen token fed as the next input;
- parameters initialised uniformly in [-0.1, 0.1];
- PPO with Adam, learning rate 0.00035; reward baseline = exponential moving average of
  previous rewards with weight 0.95; an entropy bonus with weight 0.00001.

PPO itself (Schulman et al. 2017, arXiv:1707.06347): clipped ratio objective with clip 0.2,
several epochs over each batch. Neither paper states the number of epochs or the batch of
architectures per update for NAS; the defaults here (batch 16, 4 epochs) are ours, as is
dividing the advantages by their root mean square (scale-free learning whether accuracy is a
fraction or a percentage; standard in PPO implementations). A search is one-step episodes, so the
advantage is reward minus baseline and no value head is needed.

The old log-probability of each asked candidate is remembered at ask time, so results can come
back in any order, even after the policy was updated (PPO's ratio corrects for it). Failed
trials are skipped by default, or get `failed_reward` when that is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mnas.errors import UserError
from mnas.strategies.base import CategoricalSpace, Strategy, check_float, check_int

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
        self, n: int, tokens: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample `n` token lists (or score the given [n, D] `tokens`).

        Returns tokens [n, D], their total log-probability [n] and total entropy [n].
        """
        x = self.start.expand(n, -1)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        chosen, logp, entropy = [], torch.zeros(n), torch.zeros(n)
        for i, head in enumerate(self.heads):
            h, c = self.cell(x, state)
            state = (h, c)
            log_probs = torch.log_softmax(head(h), dim=-1)
            if tokens is None:
                a = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
            else:
                a = tokens[:, i]
            chosen.append(a)
            logp = logp + log_probs.gather(1, a.unsqueeze(1)).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
            x = self.embeddings[i](a)
        return torch.stack(chosen, 1), logp, entropy


class PPOStrategy(Strategy):
    """The paper's RL controller: LSTM policy + PPO, with an EMA reward baseline."""

    name = "ppo"

    def __init__(
        self,
        space: CategoricalSpace,
        seed: int = 0,
        hidden: int = 100,
        lr: float = 3.5e-4,
        clip: float = 0.2,
        epochs: int = 4,
        batch_size: int = 16,
        baseline_decay: float = 0.95,
        entropy_weight: float = 1e-5,
        failed_reward: float | None = None,
        init_range: float = 0.1,
    ) -> None:
        super().__init__(space, seed)
        self.knobs: dict[str, Any] = {
            "hidden": check_int(hidden, "ppo hidden", 1),
            "lr": check_float(lr, "ppo lr", 0.0, 10.0),
            "clip": check_float(clip, "ppo clip", 0.0, 1.0),
            "epochs": check_int(epochs, "ppo epochs", 1),
            "batch_size": check_int(batch_size, "ppo batch_size", 1),
            "baseline_decay": check_float(baseline_decay, "ppo baseline_decay", 0.0, 1.0),
            "entropy_weight": check_float(entropy_weight, "ppo entropy_weight", 0.0),
            "failed_reward": None if failed_reward is None else check_float(failed_reward, "ppo failed_reward"),
            "init_range": check_float(init_range, "ppo init_range", 0.0),
        }
        if self.knobs["lr"] <= 0 or self.knobs["clip"] <= 0:
            raise UserError(f"ppo lr and clip must be > 0, got lr={lr!r}, clip={clip!r}")
        self.generator = torch.Generator().manual_seed(self.seed % 2**63)
        self.controller = Controller(self.sizes, self.knobs["hidden"])
        self.controller.reset_parameters(self.knobs["init_range"], self.generator)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.knobs["lr"])
        self.baseline: float | None = None
        # (tokens, behaviour log-prob or None, reward, baseline before this reward or None)
        self.buffer: list[tuple[list[int], float | None, float, float | None]] = []
        self.updates = 0

    # -- ask / tell ------------------------------------------------------------------------
    def _propose(self, n: int) -> list[tuple[list[int], dict[str, Any]]]:
        with torch.no_grad():
            tokens, logp, _ = self.controller(n, generator=self.generator)
        return [(row, {"logp": float(lp)}) for row, lp in zip(tokens.tolist(), logp.tolist())]

    def _observe(self, tokens: list[int], reward: float | None, extra: dict[str, Any]) -> None:
        base = self.baseline  # the advantage compares with *previous* rewards (NASNet)
        if reward is None:
            if self.knobs["failed_reward"] is None:
                return
            reward = float(self.knobs["failed_reward"])
        else:
            # Only real results move the baseline, so a burst of failures cannot drag it down
            # and make every later success look good.
            if self.baseline is None:
                self.baseline = reward
            else:
                d = self.knobs["baseline_decay"]
                self.baseline = d * self.baseline + (1 - d) * reward
        self.buffer.append((list(tokens), extra.get("logp"), float(reward), base))

    def _after_tell(self) -> None:
        while len(self.buffer) >= self.knobs["batch_size"]:
            batch = self.buffer[: self.knobs["batch_size"]]
            self.buffer = self.buffer[self.knobs["batch_size"] :]
            self._update(batch)

    def _update(self, batch: list[tuple[list[int], float | None, float, float | None]]) -> None:
        """PPO-clip epochs over one batch of (tokens, behaviour log-prob, reward, baseline)."""
        tokens = torch.tensor([b[0] for b in batch], dtype=torch.long)
        rewards = torch.tensor([b[2] for b in batch], dtype=torch.float64)
        mean = float(rewards.mean())  # stands in for the baseline before the first result
        adv = rewards - torch.tensor([mean if b[3] is None else b[3] for b in batch], dtype=torch.float64)
        rms = float(adv.pow(2).mean().sqrt())
        if rms > 1e-12:
            adv = adv / rms
        adv = adv.float()
        # Candidates this strategy did not ask (e.g. told from another run) use the current policy.
        if any(b[1] is None for b in batch):
            with torch.no_grad():
                current = self.controller(len(batch), tokens=tokens)[1].tolist()
        else:
            current = [0.0] * len(batch)
        old = torch.tensor([b[1] if b[1] is not None else c for b, c in zip(batch, current)], dtype=torch.float32)
        clip = self.knobs["clip"]
        for _ in range(self.knobs["epochs"]):
            _, logp, entropy = self.controller(len(batch), tokens=tokens)
            ratio = torch.exp(logp - old)
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
            loss = -surrogate.mean() - self.knobs["entropy_weight"] * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
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
            "knobs": dict(self.knobs),
            "controller": {k: v.detach().clone() for k, v in self.controller.state_dict().items()},
            "optimizer": _clone(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
            "baseline": self.baseline,
            "buffer": [(list(t), lp, r, b) for t, lp, r, b in self.buffer],
            "updates": self.updates,
        }

    def _load(self, state: dict[str, Any]) -> None:
        knobs = dict(state["knobs"])
        if knobs["hidden"] != self.knobs["hidden"]:
            raise UserError(
                f"ppo checkpoint has hidden={knobs['hidden']}, this strategy hidden={self.knobs['hidden']}; resume with the same knobs"
            )
        self.knobs = knobs
        self.controller.load_state_dict(state["controller"])
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.knobs["lr"])
        self.optimizer.load_state_dict(_clone(state["optimizer"]))
        self.generator.set_state(state["generator"].clone())
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.buffer = [
            (list(t), None if lp is None else float(lp), float(r), None if b is None else float(b))
            for t, lp, r, b in state["buffer"]
        ]
        self.updates = int(state["updates"])


def _clone(obj: Any) -> Any:
    """Deep copy of a (nested) state dict, cloning tensors so later steps never alias it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone(v) for v in obj)
    return obj

