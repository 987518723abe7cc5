"""The DreamerV3-style actor-critic that DRAMA trains in imagination (``papers/drama-mamba2-world-model.txt`` §2.3,
A.2.4; the authors' ``agents.py``), for single-agent dreams (`wmenv.dream.DreamVecEnv` with N = 1).

Glossary: H imagined steps, B worlds, F features, A actions, K value bins.

Per update: H steps of B worlds imagined with the current actor (sampled actions), then

    R_t   = r_t + γ (1 − d_t) ((1 − λ) v(s_{t+1}) + λ R_{t+1})        λ-returns (`lambda_returns`)
    S     = max(1, EMA(P95(R)) − EMA(P5(R)))                           return scale (`ReturnScale`)
    actor: −log π(a_t | s_t) · sg((R_t − v(s_t)) / S) − η H(π(· | s_t))   REINFORCE, normalized advantages
    critic: two-hot CE of v(s_t) to R_t (critic's values) + two-hot CE to R_t from the slow critic's values

with a symlog two-hot critic (255 bins), a slow critic that follows the critic by EMA (0.98 per update), the
percentiles' EMAs (0.99) starting at 0, the actor's input normalized by running mean and variance (clipped to ±10),
RMSNorm + SiLU MLPs (3 hidden layers: 256 actor, 512 critic), output layers initialized small. Where a world restarts
inside the H steps (the dream resets it), its λ-return stops there: R_t of the step that ended it is
r_t + γ (1 − d_t) v(final state), bootstrapped from the ended episode's last state when it was truncated.

Differences from the code, on purpose: the code's λ-return bootstraps each step on v(s_t), the value of the state the
action was taken in (as STORM's code); this one uses v(s_{t+1}), DreamerV3's definition that the paper cites. Adam
replaces LaProp (same lr; the code's ε 1e-20 is LaProp's), with no warm-up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmenv.checks import check_int, check_positive, check_unit_interval
from wmenv.models.drama import rms_mlp
from wmenv.models.twohot import symexp, symlog, symlog_bins, twohot_decode, twohot_loss
from wmenv.optim import adam
from wmenv.tensor_ops import softmax

__all__ = ["DreamerAC", "DreamerACConfig", "ReturnScale", "Trajectory", "lambda_returns", "return_range"]


@dataclass
class DreamerACConfig:
    """DRAMA's actor-critic (its ``train.yaml``: ``Models.Agent.AC``)."""

    gamma: float = 0.985
    """Discount γ."""
    lam: float = 0.95
    """λ of the λ-returns."""
    entropy: float = 3e-4
    """Entropy bonus η."""
    lr: float = 4e-5
    """Adam learning rate of actor and critic."""
    grad_clip: float = 100.0
    """Gradient-norm clipping."""
    layers: int = 3
    """Hidden layers of actor and critic (the code's 3; the paper's table says 2)."""
    actor_hidden: int = 256
    """Actor width."""
    critic_hidden: int = 512
    """Critic width."""
    bins: int = 255
    """K, two-hot value bins over symlog [-20, 20]."""
    slow_decay: float = 0.98
    """EMA decay of the slow critic, per update."""
    return_decay: float = 0.99
    """EMA decay of the return percentiles, per update."""
    percentiles: tuple[float, float] = (0.05, 0.95)
    """Low and high percentiles of the λ-returns whose EMA range scales the advantages."""
    horizon: int = 16
    """H, imagined steps per update."""

    def __post_init__(self) -> None:
        for name in ("layers", "actor_hidden", "critic_hidden", "horizon"):
            check_int(f"DreamerACConfig.{name}", getattr(self, name))
        for name in ("lr", "grad_clip"):
            check_positive(f"DreamerACConfig.{name}", getattr(self, name))
        for name in ("gamma", "lam", "slow_decay", "return_decay"):
            check_unit_interval(f"DreamerACConfig.{name}", getattr(self, name))
        if isinstance(self.entropy, bool) or not isinstance(self.entropy, (int, float)) or self.entropy < 0:
            raise ValueError(f"DreamerACConfig.entropy: expected a number >= 0, got {self.entropy!r}")
        low, high = self.percentiles
        if not 0 <= low < high <= 1:
            raise ValueError(f"DreamerACConfig.percentiles: expected 0 <= low < high <= 1, got {self.percentiles!r}")
        symlog_bins(self.bins)  # checks: odd, >= 3


def lambda_returns(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, restarted: Tensor, gamma: float, lam: float
) -> Tensor:
    """λ-returns of H steps of B worlds, computed backwards.

    Args:
        rewards: (H, B) r_t, received on the step from s_t.
        next_values: (H, B) v(s_{t+1}), the value of the state the step led to (for a world that was restarted after
            step t: of the ended episode's last state).
        terminated: (H, B) bool d_t: the episode terminated on step t (no value after it).
        restarted: (H, B) bool: the world was restarted after step t (terminated or truncated), so R_{t+1} belongs
            to another episode and is not chained.
        gamma, lam: γ, λ.

    Returns:
        (H, B) R_t = r_t + γ (1 − d_t) ((1 − λ) v(s_{t+1}) + λ R'_{t+1}), with R'_{t+1} = R_{t+1}, or v(s_{t+1}) at the
        last step and where the world restarted.
    """
    if not (rewards.shape == next_values.shape == terminated.shape == restarted.shape) or rewards.dim() != 2:
        shapes = [tuple(t.shape) for t in (rewards, next_values, terminated, restarted)]
        raise ValueError(f"rewards, next_values, terminated, restarted: expected four (H, B) tensors, got {shapes}")
    live = 1.0 - terminated.to(rewards.dtype)
    out, following = torch.empty_like(rewards), next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        chained = torch.where(restarted[t], next_values[t], following)  # R'_{t+1}
        out[t] = rewards[t] + gamma * live[t] * ((1 - lam) * next_values[t] + lam * chained)
        following = out[t]
    return out


def return_range(returns: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """The ``low`` and ``high`` quantiles of all returns (any shape), as the code takes them: the k-th smallest value,
    k = int(q · count) (at least 1)."""
    flat = returns.flatten()
    pick = lambda q: torch.kthvalue(flat, max(1, int(q * flat.numel()))).values  # noqa: E731
    return pick(low), pick(high)


class ReturnScale:
    """EMAs of the λ-returns' low and high percentiles (starting at 0, as the code's) and the advantage scale
    S = max(1, high − low)."""

    def __init__(self, decay: float, percentiles: tuple[float, float]) -> None:
        self.decay, self.percentiles = decay, percentiles
        self.low, self.high = 0.0, 0.0

    def update(self, returns: Tensor) -> float:
        """Fold in one batch of returns; returns the new S."""
        lo, hi = return_range(returns.detach(), *self.percentiles)
        self.low = self.decay * self.low + (1 - self.decay) * float(lo)
        self.high = self.decay * self.high + (1 - self.decay) * float(hi)
        return max(1.0, self.high - self.low)

    def state_dict(self) -> dict[str, float]:
        """The two EMAs."""
        return {"low": self.low, "high": self.high}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from `state_dict`."""
        self.low, self.high = float(state["low"]), float(state["high"])


class RunningNorm(nn.Module):
    """Normalizes inputs (..., F) by a running mean and variance of everything it was trained on (clipped to ±10);
    the statistics update in training mode only."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(1e-4))
        self.clip, self.eps = clip, eps

    def forward(self, x: Tensor) -> Tensor:
        """(..., F) -> (..., F)."""
        if self.training:
            with torch.no_grad():
                flat = x.reshape(-1, x.shape[-1])
                n, mean, var = flat.shape[0], flat.mean(0), flat.var(0, unbiased=False)
                total, delta = self.count + n, mean - self.mean
                self.var.copy_((self.var * self.count + var * n + delta.square() * self.count * n / total) / total)
                self.mean.add_(delta * n / total)
                self.count.copy_(total)
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int, out_std: float) -> nn.Sequential:
    """`rms_mlp` with its output layer initialized orthogonally at ``out_std`` and a zero bias (the code's)."""
    net = rms_mlp(in_dim, hidden, out_dim, layers)
    nn.init.orthogonal_(net[-1].weight, out_std)
    nn.init.zeros_(net[-1].bias)
    return net


@dataclass
class Trajectory:
    """H imagined steps of B worlds (one agent)."""

    features: Tensor
    """(H, B, F) the states the actions were taken in."""
    actions: Tensor
    """(H, B) int64."""
    rewards: Tensor
    """(H, B) predicted rewards."""
    terminated: Tensor
    """(H, B) bool."""
    restarted: Tensor
    """(H, B) bool: the world was restarted after the step."""
    next_features: Tensor
    """(H, B, F): the state each step led to (the ended episode's last one where restarted)."""


class DreamerAC(nn.Module):
    """Actor and two-hot critic trained in a single-agent dream (module docstring).

    Args:
        feature_dim: F, the dream's per-agent observation width.
        n_actions: A.
        config: hyperparameters (default DRAMA's).
    """

    def __init__(self, feature_dim: int, n_actions: int, config: DreamerACConfig | None = None) -> None:
        super().__init__()
        c = self.config = config if config is not None else DreamerACConfig()
        check_int("feature_dim", feature_dim)
        check_int("n_actions", n_actions)
        self.norm = RunningNorm(feature_dim)
        self.actor = _mlp(feature_dim, c.actor_hidden, n_actions, c.layers, 0.001)
        self.critic = _mlp(feature_dim, c.critic_hidden, c.bins, c.layers, 0.001)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("bins", symlog_bins(c.bins), persistent=False)
        self.optimizer = adam([*self.norm.parameters(), *self.actor.parameters(), *self.critic.parameters()], lr=c.lr)
        self.scale = ReturnScale(c.return_decay, c.percentiles)

    def logits(self, features: Tensor) -> Tensor:
        """(..., F) -> (..., A) action logits."""
        return self.actor(self.norm(features))

    def value(self, features: Tensor, slow: bool = False) -> Tensor:
        """(..., F) -> (...) values in env units (decoded two-hot)."""
        return symexp(twohot_decode((self.slow_critic if slow else self.critic)(features), self.bins))

    @torch.no_grad()
    def act(self, features: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Tensor:
        """(..., F) -> (...) int64 actions sampled (or the most likely, ``greedy``); statistics are not updated."""
        was = self.norm.training
        self.norm.eval()
        logits = self.logits(features)
        self.norm.train(was)
        if greedy:
            return logits.argmax(-1)
        flat = softmax(logits).reshape(-1, logits.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])

    @torch.no_grad()
    def imagine(self, dream, generator: torch.Generator | None = None, start=None) -> tuple[Trajectory, object]:
        """H steps of ``dream`` (a `DreamVecEnv` of one agent) with sampled actions, from ``start`` (its last
        `DreamStep`; None: ``dream.reset()``). Returns the trajectory and the dream's last step (to continue from)."""
        if dream.spec.n_agents != 1:
            raise ValueError(f"dream: the DreamerV3 actor-critic is single-agent, the dream has {dream.spec.n_agents}")
        step = dream.reset() if start is None else start
        keys = ("features", "actions", "rewards", "terminated", "restarted", "next_features")
        out: dict[str, list[Tensor]] = {k: [] for k in keys}
        for _ in range(self.config.horizon):
            feat = step.obs[:, 0]
            action = self.act(feat, generator)
            step = dream.step(action[:, None])
            done = step.done
            nxt = torch.where(done[:, None], step.final_obs[:, 0], step.obs[:, 0])
            for k, v in zip(keys, (feat, action, step.reward[:, 0], step.terminated[:, 0], done, nxt)):
                out[k].append(v)
        return Trajectory(**{k: torch.stack(v) for k, v in out.items()}), step

    def update(self, traj: Trajectory) -> dict[str, float]:
        """One gradient step of actor and critic on ``traj``; then the slow critic's EMA. Returns the loss terms."""
        c = self.config
        self.train()
        with torch.no_grad():
            next_v = self.value(traj.next_features)
            next_slow = self.value(traj.next_features, slow=True)
            returns = lambda_returns(traj.rewards, next_v, traj.terminated, traj.restarted, c.gamma, c.lam)
            slow_returns = lambda_returns(traj.rewards, next_slow, traj.terminated, traj.restarted, c.gamma, c.lam)
            scale = self.scale.update(returns)
        raw = self.critic(traj.features)  # (H, B, K)
        value = symexp(twohot_decode(raw, self.bins))
        critic_loss = twohot_loss(raw, symlog(returns), self.bins).mean()
        slow_loss = twohot_loss(raw, symlog(slow_returns), self.bins).mean()
        logp = F.log_softmax(self.logits(traj.features), -1)  # (H, B, A)
        chosen = logp.gather(-1, traj.actions.long().unsqueeze(-1)).squeeze(-1)
        advantage = ((returns - value) / scale).detach()
        entropy = -(logp.exp() * logp).sum(-1).mean()
        policy_loss = -(chosen * advantage).mean()
        loss = policy_loss - c.entropy * entropy + critic_loss + slow_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], c.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            for slow, p in zip(self.slow_critic.parameters(), self.critic.parameters()):
                slow.mul_(c.slow_decay).add_(p.detach(), alpha=1 - c.slow_decay)
        terms = {"policy_loss": policy_loss, "critic_loss": critic_loss, "slow_loss": slow_loss, "entropy": entropy}
        stats = {k: float(v.detach()) for k, v in terms.items()}
        return {**stats, "return_scale": scale, "return_mean": float(returns.mean())}
