"""MAPPO (Yu et al., 2022): a shared recurrent actor and a centralized critic trained with clipped PPO.

Glossary: T rollout steps, E parallel envs, N agents, D observation features, S global-state features,
A actions, L chunk length, B batch (env × agent rows when acting, chunks when learning).

`MAPPO.collect` fills a `RolloutStorage` from anything with the batched `VecEnv` interface (the real
`wmenv.envs.vector.VecEnv` or a world model's dream env); `MAPPO.update` learns from a filled storage
and never looks at where it came from. The loss terms are pure functions (`ppo_policy_loss`,
`ppo_value_loss`) so they can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn import functional as F

from agents.critic import CentralCritic, CriticConfig
from agents.gae import gae
from agents.policies.base import (
    PolicyState,
    RecurrentPolicy,
    gaussian_log_prob_entropy,
    gaussian_sample,
    log_prob_entropy,
    mask_logits,
    masked_mean,
    sample_actions,
)
from agents.policies.gru import GRUPolicy, GRUPolicyConfig
from agents.replay_value import ValueTargets
from agents.storage import BatchedEnv, Carry, Chunks, Episodes, RolloutStorage, length_groups
from agents.verdict import PolicyTargets
from wmenv.checks import check_device, check_int, check_positive, check_unit_interval
from wmenv.data.collect import ended_metrics
from wmenv.envs.spec import action_bounds
from wmenv.optim import adam

__all__ = [
    "MAPPO",
    "MAPPOConfig",
    "entropy_floor_step",
    "masked_mean",
    "normalized_choice_entropy",
    "normalized_entropy",
    "ppo_policy_loss",
    "ppo_value_loss",
]


@dataclass
class MAPPOConfig:
    """PPO hyperparameters; defaults are the MAPPO paper's MPE settings (Yu et al., 2022, Tables 11-13)."""

    rollout_length: int = 25
    """T, steps per env between updates (one MPE episode)."""
    epochs: int = 15
    """Passes over each rollout (MAPPO's ``ppo_epoch`` for MPE)."""
    num_minibatches: int = 1
    """Minibatches per epoch, each a random subset of the (chunk, env, agent) sequences."""
    chunk_length: int = 10
    """L, steps per training sequence; recurrent states restart from the stored state at each chunk start."""
    lr: float = 7e-4
    """Actor learning rate (Adam)."""
    critic_lr: float = 7e-4
    """Critic learning rate (Adam)."""
    adam_eps: float = 1e-5
    """Adam epsilon (MAPPO's ``opti_eps``)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip: float = 0.2
    """PPO ratio clipping ε."""
    clip_value_loss: bool = True
    """Clip value predictions around the collected ones (MAPPO's ``use_clipped_value_loss``)."""
    value_clip: float = 0.2
    """Range of the value clipping, in normalized units."""
    huber_loss: bool = True
    """Huber instead of squared value error."""
    huber_delta: float = 10.0
    """δ of the Huber loss."""
    value_coef: float = 1.0
    """Weight of the value loss."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""
    entropy_decay: float = 1.0
    """Multiplies the entropy weight after every minibatch step (MAMBA's ``ENTROPY_ANNEALING``: 0.99998); the
    learners pass the decay of earlier updates as ``update(entropy_scale=...)``, so it survives a resume."""
    entropy_floor: float = 0.0
    """Discrete actions: a floor on the actor's entropy where it has a choice (valid rows with more than one available
    action), as a fraction of the uniform policy's entropy there (the mean over those rows of entropy / log #available,
    `normalized_choice_entropy`); 0 (the default) turns it off. When on, the loss adds a second bonus, α × that
    normalized entropy, whose weight α adapts by dual ascent as SAC's temperature does (`entropy_floor_step`: after
    every minibatch step log α += ``entropy_floor_lr`` × (floor − measured), α within [1e-4, 10], starting at 0.01):
    it grows while the entropy is below the floor and fades to 1e-4 above it. α is learner state (``entropy_floor_log_weight``,
    saved with the agent). Meant against Flatland's collapse to standing still, where the agent chooses on few cells.
    Measured (BENCHMARKS.md, "An entropy floor where the agent chooses"): at 0.5 on Flatland-5 in the MAMBA code's
    settings it keeps the actor sampling (normalized choice entropy 0.88 at 15k, seed 0) but the actor still leans to
    stopping and arrives no more than without it; on MPE (``simple_spread_v3``, 30k, 2 seeds) it holds the entropy at
    0.43–0.63 and the greedy return is level (−22.1 against −21.7). Off by default."""
    entropy_floor_lr: float = 0.3
    """Step of log α per minibatch step and unit of entropy deficit (`entropy_floor`). At 0.3 α crosses its range
    (a factor 1e5) in ≈ 80 steps at a deficit of 0.5: about one iteration of the model-based loop's dream updates
    (40–60 minibatch steps), which is how fast Flatland's collapse happens; 0.1 let it collapse first (seed 0, 5k)."""
    aux_coef: float = 1.0
    """Weight of the policy's auxiliary loss from `forward_train` (the GRU and Mamba policies have none)."""
    max_grad_norm: float = 10.0
    """Gradient-norm clipping, applied to actor and critic separately."""
    normalize_advantages: bool = True
    """Standardize advantages over the living agents of each rollout."""
    log_std_init: float = -1.0
    """Continuous actions: initial value of the Gaussian's state-independent log-std (one per action dim). -1 (std
    0.37) is MAPPO's MuJoCo start (``sigmoid(1) × 0.5``)."""
    device: str = "cpu"
    """Torch device of the networks and the storage."""

    def __post_init__(self) -> None:
        for name in ("rollout_length", "epochs", "num_minibatches", "chunk_length"):
            check_int(f"MAPPOConfig.{name}", getattr(self, name))
        v = self.log_std_init
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -20 < v < 5:
            raise ValueError(f"MAPPOConfig.log_std_init: expected a number in (-20, 5), got {self.log_std_init!r}")
        for name in ("lr", "critic_lr", "adam_eps", "clip", "value_clip", "huber_delta", "max_grad_norm"):
            check_positive(f"MAPPOConfig.{name}", getattr(self, name))
        for name in ("gamma", "gae_lambda", "entropy_decay"):
            check_unit_interval(f"MAPPOConfig.{name}", getattr(self, name), what="a value")
        check_unit_interval("MAPPOConfig.entropy_floor", self.entropy_floor, what="a value", open_high=True)
        check_positive("MAPPOConfig.entropy_floor_lr", self.entropy_floor_lr)
        for name in ("value_coef", "entropy_coef", "aux_coef"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and np.isfinite(v)):
                raise ValueError(f"MAPPOConfig.{name}: expected a non-negative finite number, got {v!r}")
        check_device("MAPPOConfig.device", self.device)


def host_array(x: Tensor | np.ndarray, dtype: type) -> np.ndarray:
    """``x`` as a NumPy array of ``dtype`` (a tensor on any device is copied to the host first)."""
    return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=dtype)


def ppo_policy_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, valid: Tensor, clip: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss ``-E[min(ρA, clip(ρ, 1±ε)A)]`` over valid entries.

    Args:
        log_probs: (...) float, under the current policy.
        old_log_probs: (...) float, under the policy that collected the data.
        advantages: (...) float.
        valid: (...) bool, entries that count.
        clip: ε.

    Returns:
        loss: scalar; stats: ``approx_kl`` (``E[(ρ - 1) - log ρ]``), ``clip_frac`` (detached scalars).
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    loss = -masked_mean(surrogate, valid)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1) - log_ratio, valid),
            "clip_frac": masked_mean(((ratio - 1).abs() > clip).float(), valid),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, targets: Tensor, valid: Tensor, clip: float | None, huber_delta: float | None
) -> Tensor:
    """MAPPO's value loss: Huber (or squared) error, pessimistic over the clipped prediction, over valid entries.

    Args:
        values: (...) float, current predictions.
        old_values: (...) float, predictions at collection.
        targets: (...) float, regression targets (all three in the same, normalized units).
        valid: (...) bool, entries that count.
        clip: value-clipping range, None for no clipping.
        huber_delta: δ, None for the squared error.

    Returns:
        scalar loss.
    """

    loss = _value_error(targets - values, huber_delta)
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.max(loss, _value_error(targets - clipped, huber_delta))
    return masked_mean(loss, valid)


ENTROPY_FLOOR_WEIGHT_INIT = 0.01
"""α of `MAPPOConfig.entropy_floor` before the first update."""
ENTROPY_FLOOR_WEIGHT_RANGE = (1e-4, 10.0)
"""The range α of `MAPPOConfig.entropy_floor` adapts within."""


def normalized_entropy(entropy: Tensor, action_mask: Tensor) -> Tensor:
    """Each row's entropy / log(#available actions): 1 for the uniform choice among them (rows with one or no
    available action are divided by log 2; their entropy is 0).

    Args:
        entropy: (...) float, the policy's entropy over the available actions.
        action_mask: (..., A) bool, available actions.

    Returns:
        (...) float in [0, 1].
    """
    return entropy / action_mask.sum(-1).clamp(min=2).log()


def normalized_choice_entropy(entropy: Tensor, action_mask: Tensor, valid: Tensor) -> Tensor:
    """Mean of `normalized_entropy` over the valid rows with a choice (0 where there are none).

    Args:
        entropy: (...) float, the policy's entropy over the available actions.
        action_mask: (..., A) bool, available actions.
        valid: (...) bool, rows that count.

    Returns:
        scalar in [0, 1]: 1 for the uniform policy over the available actions on every such row.
    """
    choice = valid & (action_mask.sum(-1) > 1)
    return masked_mean(normalized_entropy(entropy, action_mask), choice)


def entropy_floor_step(log_weight: Tensor, floor: float, measured: Tensor, lr: float) -> Tensor:
    """One dual-ascent step of the entropy floor's log-weight: ``log α + lr × (floor − measured)``, clamped to
    `ENTROPY_FLOOR_WEIGHT_RANGE` (α grows while the measured entropy is below the floor, shrinks above it).

    Args:
        log_weight: scalar, log α.
        floor: the target normalized entropy.
        measured: scalar, the normalized entropy of the minibatch just stepped on (`normalized_choice_entropy`).
        lr: step size.

    Returns:
        scalar, the next log α.
    """
    low, high = ENTROPY_FLOOR_WEIGHT_RANGE
    return (log_weight + lr * (floor - measured.detach())).clamp(float(np.log(low)), float(np.log(high)))


def pad_steps(x: Tensor, steps: int) -> Tensor:
    """(B, n, ...) -> (B, steps, ...), zeros after step n (finite values where the losses mask padding out)."""
    if x.shape[1] == steps:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, steps - x.shape[1]))


def _action_bounds(spec: Any) -> tuple[Tensor, Tensor]:
    """(N, A) float bounds of each agent's continuous actions (`wmenv.envs.spec.action_bounds`; 0 on padded dims), or
    ±inf for a spec without ``action_spaces``."""
    if getattr(spec, "action_spaces", None) is None:
        inf = torch.full((spec.n_agents, spec.n_actions), float("inf"))
        return -inf, inf
    low, high = action_bounds(spec)
    return torch.from_numpy(low), torch.from_numpy(high)


def _value_error(e: Tensor, huber_delta: float | None) -> Tensor:
    """Elementwise Huber loss of the error ``e`` with δ = ``huber_delta``, or ``e² / 2`` when it is None.

    A module-level function rather than a closure in `ppo_value_loss`, so mutation testing reports its mutants apart.
    """
    if huber_delta is None:
        return 0.5 * e**2
    a = e.abs()
    return torch.where(a <= huber_delta, 0.5 * e**2, huber_delta * (a - 0.5 * huber_delta))


class MAPPO(nn.Module):
    """The learner: policy, critic, optimizer and the random stream for sampling and minibatches.

    Discrete actions come from a masked categorical over the policy's logits. Continuous actions come from a diagonal
    Gaussian: the policy's output is the mean, ``log_std`` a learned state-independent parameter (MAPPO's MuJoCo
    actor); samples are clipped to the env's bounds only when sent to the env (`env_actions`), while log-probabilities
    score the unclipped sample. For continuous actions the action mask marks the dims each agent has (agents with
    fewer dims than the widest are padded): padded dims count in no log-probability or entropy.

    Args:
        spec: the env's `EnvSpec` (or any object with ``n_agents``, ``obs_dim``, ``state_dim``,
            ``n_actions``, ``discrete``; ``action_spaces`` gives continuous actions their bounds).
        config: PPO hyperparameters; defaults to `MAPPOConfig()`.
        policy: the actor; defaults to a `GRUPolicy` built from ``policy_config``.
        critic: the critic; defaults to a `CentralCritic` built from ``critic_config``.
        policy_config, critic_config: used only when ``policy`` / ``critic`` are not given.
        seed: seeds the sampling / shuffling stream (``self.generator``).
    """

    def __init__(
        self,
        spec: Any,
        config: MAPPOConfig | None = None,
        policy: RecurrentPolicy | None = None,
        critic: CentralCritic | None = None,
        policy_config: GRUPolicyConfig | None = None,
        critic_config: CriticConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else MAPPOConfig()
        if not isinstance(cfg, MAPPOConfig):
            raise TypeError(f"config: expected a MAPPOConfig, got {type(cfg).__name__}")
        self.n_agents, self.obs_dim = spec.n_agents, spec.obs_dim
        self.state_dim, self.n_actions = spec.state_dim, spec.n_actions
        self.policy = policy if policy is not None else GRUPolicy(spec.obs_dim, spec.n_actions, policy_config)
        self.critic = critic if critic is not None else CentralCritic(spec.state_dim, spec.n_agents, critic_config)
        if (self.policy.obs_dim, self.policy.n_actions) != (spec.obs_dim, spec.n_actions):
            raise ValueError(
                f"policy: expected obs_dim={spec.obs_dim}, n_actions={spec.n_actions}, "
                f"got {self.policy.obs_dim}, {self.policy.n_actions}"
            )
        if (self.critic.state_dim, self.critic.n_agents) != (spec.state_dim, spec.n_agents):
            raise ValueError(
                f"critic: expected state_dim={spec.state_dim}, n_agents={spec.n_agents}, "
                f"got {self.critic.state_dim}, {self.critic.n_agents}"
            )
        self.discrete = bool(spec.discrete)
        if cfg.entropy_floor > 0:
            if not self.discrete:
                raise ValueError(
                    f"config.entropy_floor: applies to discrete actions (the rows where the agent has a choice); "
                    f"this env's actions are continuous, got entropy_floor={cfg.entropy_floor}"
                )
            self.register_buffer("entropy_floor_log_weight", torch.tensor(float(np.log(ENTROPY_FLOOR_WEIGHT_INIT))))
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((spec.n_actions,), float(cfg.log_std_init)))
            low, high = _action_bounds(spec)
            self.register_buffer("action_low", low, persistent=False)  # (N, A)
            self.register_buffer("action_high", high, persistent=False)
        self.device = torch.device(cfg.device)
        self.to(self.device)
        actor_params = [*self.policy.parameters(), *([] if self.discrete else [self.log_std])]
        self.optimizer = adam(
            [{"params": actor_params, "lr": cfg.lr}, {"params": self.critic.parameters(), "lr": cfg.critic_lr}],
            lr=cfg.lr,
            eps=cfg.adam_eps,
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # --- acting ---------------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self, obs: Tensor, actor_state: PolicyState, resets: Tensor, action_mask: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, PolicyState]:
        """Decentralized action selection for B agents; masked actions are never chosen.

        Args:
            obs: (B, D) float.
            actor_state: name -> (B, ...), the state before the step.
            resets: (B,) bool, restore the initial state first.
            action_mask: (B, A) bool, available actions (continuous: the agent's own action dims).
            deterministic: take the most likely available action (continuous: the mean) instead of sampling.

        Returns:
            actions: (B,) int64, or (B, A) float unclipped (`env_actions` clips them for the env);
            log_probs: (B,) float; actor_state: the state after the step.
        """
        out, actor_state = self.policy.step(obs, actor_state, resets)
        actions, log_probs = self._act_on(out, action_mask, deterministic)
        return actions, log_probs, actor_state

    def _act_on(self, out: Tensor, action_mask: Tensor, deterministic: bool) -> tuple[Tensor, Tensor]:
        """Actions and their log-probabilities from the policy's (B, A) output: logits or the Gaussian's mean."""
        if self.discrete:
            logits = mask_logits(out, action_mask)
            actions = sample_actions(logits, self.generator, deterministic)
            return actions, log_prob_entropy(logits, actions)[0]
        actions = gaussian_sample(out, self.log_std, self.generator, deterministic)
        return actions, self.log_prob_entropy(out, action_mask, actions)[0]

    def log_prob_entropy(self, out: Tensor, action_mask: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities of ``actions`` and the entropies under the policy's output ``out`` (..., A): the masked
        categorical over logits, or the Gaussian around a mean on the agent's own dims; both (...) float."""
        if self.discrete:
            return log_prob_entropy(mask_logits(out, action_mask), actions)
        return gaussian_log_prob_entropy(out, self.log_std, actions, action_mask.bool())

    def env_actions(self, actions: Tensor, num_envs: int) -> np.ndarray:
        """Actions from `act` for E·N rows as the env takes them: (E, N) int64, or (E, N, A) float clipped to bounds."""
        actions = actions.detach()
        if self.discrete:
            return rearrange(actions, "(e n) -> e n", e=num_envs).cpu().numpy()
        actions = rearrange(actions, "(e n) a -> e n a", e=num_envs)
        return torch.clamp(actions, self.action_low, self.action_high).cpu().numpy()

    def new_storage(self, num_envs: int, length: int | None = None) -> RolloutStorage:
        """An empty `RolloutStorage` of ``length`` steps (default ``config.rollout_length``) for ``num_envs`` envs."""
        length = self.config.rollout_length if length is None else length
        return RolloutStorage(
            length, num_envs, self.n_agents, self.obs_dim, self.state_dim, self.n_actions,
            self.policy.state_shapes(), self.critic.state_shapes(), self.device, self.discrete,
        )  # fmt: skip

    def _tensor(self, x: Any, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, device=self.device).to(dtype)

    def start(self, env: BatchedEnv) -> Carry:
        """Reset ``env`` and return the carry for the first rollout (initial recurrent states)."""
        s = env.reset()
        E, N, f, b = env.num_envs, self.n_agents, torch.float32, torch.bool
        return Carry(
            obs=self._tensor(s.obs, f), state=self._tensor(s.state, f), alive=self._tensor(s.alive, b),
            action_mask=self._tensor(s.action_mask, b), resets=torch.ones(E, N, dtype=b, device=self.device),
            actor_state=self.policy.initial_state(E * N), critic_state=self.critic.initial_state(E * N),
        )  # fmt: skip

    def _discounts(self, step: Any, num_envs: int) -> Tensor:
        """(E, N) the step's factor on γ: its ``discount`` (a dream with expected terminations), else 1."""
        discount = getattr(step, "discount", None)
        if discount is None:
            return torch.ones(num_envs, self.n_agents, device=self.device)
        return self._tensor(discount, torch.float32)

    @torch.no_grad()
    def collect(self, env: BatchedEnv, storage: RolloutStorage, carry: Carry) -> tuple[Carry, Episodes]:
        """Run ``storage.length`` steps of ``env`` with the current policy and write every step to ``storage``.

        Per agent, a trajectory ends when the agent terminated or was truncated or its env's episode
        ended; truncated trajectories are bootstrapped with the critic's value of the state they were
        cut in (``final_state`` where the env was reset), terminated ones are not.

        Returns:
            carry: for the next rollout; episodes: the episodes that ended.
        """
        E, N, f, b = storage.num_envs, self.n_agents, torch.float32, torch.bool
        if env.num_envs != E:
            raise ValueError(f"env: expected {E} envs (as storage), got {env.num_envs}")
        agent = torch.arange(N, device=self.device).repeat(E)  # (E*N,)
        storage.clear()
        ep_returns, ep_lengths, ep_metrics = [], [], []
        for t in range(storage.length):
            resets = carry.resets.flatten()  # (E*N,)
            obs = rearrange(carry.obs, "e n d -> (e n) d")  # (E*N, D)
            mask = rearrange(carry.action_mask, "e n a -> (e n) a")  # (E*N, A)
            actions, log_probs, actor_state = self.act(obs, carry.actor_state, resets, mask)
            state_rows = repeat(carry.state, "e s -> (e n) s", n=N)  # (E*N, S)
            values, critic_state = self.critic.step(state_rows, agent, carry.critic_state, resets)
            s = env.step(self.env_actions(actions, E))
            terminated, truncated = self._tensor(s.terminated, b), self._tensor(s.truncated, b)
            done = self._tensor(s.done, b)
            ended = terminated | truncated | done[:, None]  # (E, N)
            bootstrap = truncated & ~terminated
            boot_values = torch.zeros(E * N, device=self.device)
            if bool(bootstrap.any()):
                cut = torch.where(done[:, None], self._tensor(s.final_state, f), self._tensor(s.state, f))  # (E, S)
                no_reset = torch.zeros(E * N, dtype=b, device=self.device)
                boot_values, _ = self.critic.step(repeat(cut, "e s -> (e n) s", n=N), agent, critic_state, no_reset)
            per_agent = {"actor_state": carry.actor_state, "critic_state": carry.critic_state}
            storage[t] = {
                "obs": carry.obs, "state": carry.state, "alive": carry.alive, "action_mask": carry.action_mask,
                "resets": carry.resets, "actions": rearrange(actions, "(e n) ... -> e n ...", n=N),
                "log_probs": rearrange(log_probs, "(e n) -> e n", n=N), "values": rearrange(values, "(e n) -> e n", n=N),
                "rewards": self._tensor(s.reward, f), "dones": ended, "truncated": bootstrap,
                "bootstrap_values": rearrange(boot_values, "(e n) -> e n", n=N), "discounts": self._discounts(s, E),
                **{k: {n: rearrange(v, "(e a) ... -> e a ...", a=N) for n, v in st.items()} for k, st in per_agent.items()},
            }  # fmt: skip
            carry = Carry(
                obs=self._tensor(s.obs, f), state=self._tensor(s.state, f), alive=self._tensor(s.alive, b),
                action_mask=self._tensor(s.action_mask, b), resets=ended, actor_state=actor_state, critic_state=critic_state,
            )  # fmt: skip
            done_np = np.asarray(done.cpu())
            if done_np.any():
                ep_returns.append(host_array(s.episode_return, np.float32)[done_np])
                ep_lengths.append(host_array(s.episode_length, np.int64)[done_np])
                ep_metrics += ended_metrics(s, done_np)
        state_rows = repeat(carry.state, "e s -> (e n) s", n=N)  # (E*N, S)
        last, _ = self.critic.step(state_rows, agent, carry.critic_state, carry.resets.flatten())
        storage.last_values = rearrange(last, "(e n) -> e n", n=N)
        episodes = Episodes(
            returns=np.concatenate(ep_returns) if ep_returns else np.zeros((0, N), dtype=np.float32),
            lengths=np.concatenate(ep_lengths) if ep_lengths else np.zeros(0, dtype=np.int64),
            metrics=ep_metrics,
        )
        return carry, episodes

    # --- learning -------------------------------------------------------------------------------
    @torch.no_grad()
    def advantages(self, storage: RolloutStorage) -> tuple[Tensor, Tensor]:
        """GAE on denormalized values.

        Returns:
            advantages: (T, E, N), standardized over living agents if ``normalize_advantages``.
            returns: (T, E, N), value targets in return units.
        """
        cfg, vn = self.config, self.critic.value_norm
        adv, ret = gae(
            storage.rewards, vn.denormalize(storage.values), storage.dones, storage.truncated,
            vn.denormalize(storage.bootstrap_values), vn.denormalize(storage.last_values), cfg.gamma, cfg.gae_lambda,
            storage.discounts,
        )  # fmt: skip
        if cfg.normalize_advantages:
            live = adv[storage.alive]
            if live.numel() > 1:
                adv = (adv - live.mean()) / (live.std() + 1e-5)
        return adv, ret

    def loss(
        self,
        batch: Chunks,
        entropy_coef: float | None = None,
        value_targets: ValueTargets | None = None,
        policy_targets: PolicyTargets | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The MAPPO loss of a minibatch of chunks (updates the value normalizer with its valid returns).

        Dead agents and padding (``batch.valid`` False) contribute nothing to any term. ``entropy_coef`` replaces
        ``config.entropy_coef`` (an annealed weight). ``value_targets`` adds their weight times the critic's (unclipped)
        value loss on those rows, e.g. real λ-returns (`agents.replay_value`); the value normalizer is not updated
        with them. ``policy_targets`` adds their weight times the cross-entropy of the actor's distribution at their
        cells (from a fresh recurrent state) against their targets (`agents.verdict`).

        Returns:
            loss: scalar; stats: detached scalars for logging.
        """
        cfg, vn, valid = self.config, self.critic.value_norm, batch.valid
        out, aux_loss, aux_stats, values = self._forward(batch)
        log_probs, entropy = self.log_prob_entropy(out, batch.action_mask, batch.actions)  # (B, L) each
        policy_loss, stats = ppo_policy_loss(log_probs, batch.log_probs, batch.advantages, valid, cfg.clip)
        if self.discrete:  # where the agent has a choice: Flatland's trains have one action on most cells
            choice = valid & (batch.action_mask.sum(-1) > 1)
            stats["choice_entropy"] = masked_mean(entropy, choice).detach()
            stats["choice_fraction"] = (choice.sum() / valid.sum().clamp(min=1)).detach()
        entropy_rows, entropy = entropy, masked_mean(entropy, valid)
        if bool(valid.any()):
            vn.update(batch.returns[valid])
        value_loss = ppo_value_loss(
            values, batch.values, vn.normalize(batch.returns), valid,
            cfg.value_clip if cfg.clip_value_loss else None, cfg.huber_delta if cfg.huber_loss else None,
        )  # fmt: skip
        ent_coef = cfg.entropy_coef if entropy_coef is None else entropy_coef
        loss = policy_loss - ent_coef * entropy + cfg.value_coef * value_loss + cfg.aux_coef * aux_loss
        if cfg.entropy_floor > 0:
            floor_entropy = normalized_choice_entropy(entropy_rows, batch.action_mask, valid)
            loss = loss - self.entropy_floor_log_weight.exp() * floor_entropy
            stats["floor_entropy"] = floor_entropy.detach()
        stats.update(policy_loss=policy_loss.detach(), value_loss=value_loss.detach(), entropy=entropy.detach())
        if value_targets is not None:
            vt = value_targets
            values = self.critic.forward_sequence(vt.state, vt.agent, vt.resets, self.critic.initial_state(len(vt.agent)))
            extra = ppo_value_loss(values, values, vn.normalize(vt.targets), vt.valid, None,
                                   cfg.huber_delta if cfg.huber_loss else None)  # fmt: skip
            loss = loss + vt.weight * extra
            stats["replay_value_loss"] = extra.detach()
        if policy_targets is not None:
            pt = policy_targets
            fresh = torch.ones(len(pt.obs), dtype=torch.bool, device=pt.obs.device)
            logits, _ = self.policy.step(pt.obs, self.policy.initial_state(len(pt.obs)), fresh)
            log_probs = torch.log_softmax(mask_logits(logits, pt.action_mask), -1)
            verdict = -(pt.target * torch.where(pt.action_mask, log_probs, 0.0)).sum(-1).mean()
            loss = loss + pt.weight * verdict
            stats["verdict_loss"] = verdict.detach()
        stats.update({f"aux/{k}": torch.as_tensor(v) for k, v in aux_stats.items()})
        if aux_stats:
            stats["aux_loss"] = aux_loss.detach()
        return loss, stats

    def _forward(self, batch: Chunks) -> tuple[Tensor, Tensor, dict[str, float], Tensor]:
        """The actor's outputs (B, L, A) with its auxiliary loss and stats, and the critic's values (B, L), of a minibatch.

        Chunks shorter than L (the last of each sequence when L does not divide T: a third of the dream's chunks,
        horizon 15 in chunks of 10) run at their own length, one group per length, and their outputs are padded back
        to L. Padding is invalid in every loss term and both networks are causal, so the loss and its gradients are
        the padded pass's (to rounding) for the work of the real steps only. A policy with an auxiliary loss
        (`RecurrentPolicy.has_aux_loss`: SP-Mamba's is a mean over its own steps) takes the padded pass whole.
        """
        L = batch.obs.shape[1]
        groups, order = ([(slice(None), L)], None) if self.policy.has_aux_loss else length_groups(batch.lengths)
        outs, values = [], []
        for rows, n in groups:
            part = batch.index(rows).trim(n)
            # with several groups the policy has no auxiliary loss: every group's is zero and empty of stats
            out, aux_loss, aux_stats = self.policy.forward_train(
                part.obs, part.resets, part.actor_state, part.actions, part.valid
            )
            outs.append(pad_steps(out, L))
            values.append(pad_steps(self.critic.forward_sequence(part.state, part.agent, part.resets, part.critic_state), L))
        out, value = (outs[0], values[0]) if len(groups) == 1 else (torch.cat(outs), torch.cat(values))
        if order is not None:
            out, value = out[order], value[order]
        return out, aux_loss, aux_stats, value

    def minibatch_steps(self) -> int:
        """Optimizer steps one `update` takes (``epochs × num_minibatches``)."""
        return self.config.epochs * self.config.num_minibatches

    def entropy_scale_after(self, updates: int) -> float:
        """The entropy weight's factor after ``updates`` earlier updates: ``entropy_decay ** (updates × minibatch steps)``."""
        return float(self.config.entropy_decay ** (updates * self.minibatch_steps()))

    def update(
        self,
        storage: RolloutStorage,
        lr_scale: float = 1.0,
        entropy_scale: float = 1.0,
        value_targets: ValueTargets | None = None,
        policy_targets: PolicyTargets | None = None,
    ) -> dict[str, float]:
        """``epochs`` passes of minibatch PPO over a filled storage.

        Args:
            storage: written by `collect` (or any source) for all T steps.
            lr_scale: multiplies both learning rates (linear annealing passes ``1 - progress``).
            entropy_scale: multiplies ``entropy_coef`` (`entropy_scale_after` of the minibatch steps taken before).
            value_targets: further critic targets, whole in every minibatch (`loss`).
            policy_targets: target distributions for the actor at cells, whole in every minibatch (`loss`).

        Returns:
            name -> mean over minibatches (losses, entropy, approx_kl, clip_frac, grad norms; with discrete actions
            also ``choice_entropy``, the entropy on valid rows with more than one available action, and
            ``choice_fraction``, their share of the valid rows; with an `entropy_floor`, ``floor_entropy``, the
            normalized entropy it holds up, and ``entropy_floor_weight``, the mean α the steps used).
        """
        cfg = self.config
        check_unit_interval("lr_scale", lr_scale, what="a value", open_low=True)
        check_unit_interval("entropy_scale", entropy_scale, what="a value")
        for group, lr in zip(self.optimizer.param_groups, (cfg.lr, cfg.critic_lr)):
            group["lr"] = lr * lr_scale
        adv, ret = self.advantages(storage)
        chunks = storage.chunks(cfg.chunk_length, adv, ret)
        n = len(chunks)
        size = -(-n // cfg.num_minibatches)
        totals: dict[str, float] = {}
        count = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=self.generator, device=self.device)
            for idx in perm.split(size):
                # One minibatch holds every chunk and the loss is a mean over them, so storage order gives the same
                # loss without a copy and keeps each env's N agent rows together (`AttentionCritic` attends once for them).
                ent_coef = cfg.entropy_coef * entropy_scale * cfg.entropy_decay**count
                loss, stats = self.loss(
                    chunks if len(idx) == n else chunks.index(idx), ent_coef, value_targets, policy_targets
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm_actor"] = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                stats["grad_norm_critic"] = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                if cfg.entropy_floor > 0:
                    stats["entropy_floor_weight"] = self.entropy_floor_log_weight.exp()  # the weight this step used
                    self.entropy_floor_log_weight.copy_(entropy_floor_step(
                        self.entropy_floor_log_weight, cfg.entropy_floor, stats["floor_entropy"], cfg.entropy_floor_lr
                    ))  # fmt: skip
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += 1
        return {k: v / count for k, v in totals.items()}
