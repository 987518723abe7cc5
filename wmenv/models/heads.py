"""The prediction heads every world model of this library shares, and their losses on replay windows.

Glossary: B batch, T time, N agents, D observation features, A actions, F features the heads read.

Per agent: observation (Gaussian, unit variance: squared error), reward (a scalar with squared error, or
DreamerV3's symlog two-hot categorical: `wmenv.models.twohot`), continuation (Bernoulli: the agent is present
and not terminated), available actions (Bernoulli per action, for envs with masks) and the action decoder of
the info loss (MAMBA eq. 5: -ln p(a_{t-1} | features_t): a categorical over discrete actions, a unit-variance
Gaussian over continuous ones rescaled to [-1, 1], i.e. squared error). Continuous specs have no mask head.
A model chooses what each head reads: MAMBA gives all of them [h, z]; MABL gives the observation, reward and info
heads the agent level only and the continuation and mask heads both levels.

Absorbing states: an agent that is absent at row t (gone, or not yet there) has no observation loss; its
reward and continuation targets are 0 (the replay stores zeros there).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wmenv.envs.spec import action_bounds, own_action_dims
from wmenv.models.rssm import mlp
from wmenv.models.twohot import symexp, symlog, symlog_bins, twohot_decode, twohot_loss
from wmenv.models.world_model import Prediction, error_means
from wmenv.tensor_ops import compiled, log_softmax

RewardKind = Literal["mse", "twohot"]


def check_reward_head(owner: str, kind: object, bins: object) -> None:
    """Refuse an unknown reward head kind or a bin count that leaves 0 without a bin, naming ``owner``'s field."""
    if kind not in ("mse", "twohot"):
        raise ValueError(f"{owner}.reward_head: expected 'mse' or 'twohot', got {kind!r}")
    if not isinstance(bins, int) or bins < 3 or bins % 2 == 0:  # True / False are ints below 3
        raise ValueError(f"{owner}.reward_bins: expected an odd integer >= 3 (so that 0 is a bin), got {bins!r}")


class HeadsMixin:
    """Builds, runs and trains the heads of a `WorldModel`, and encodes the actions it reads (`_encode_actions`).

    The host sets ``spec`` and calls `_build_heads` in its ``__init__``; the attribute names
    (``obs_head``, ``reward_head``, ``cont_head``, ``mask_head``, ``action_head``) are the checkpoints' keys.
    """

    spec: object
    reward_kind: RewardKind

    reward_event_weight: float = 1.0
    reward_event_threshold: float = 1.0

    def _build_heads(
        self,
        agent_dim: int,
        full_dim: int,
        hidden: int,
        layers: int,
        reward_kind: RewardKind,
        reward_bins: int,
        event_weight: float = 1.0,
        event_threshold: float = 1.0,
    ) -> None:
        """Heads reading ``agent_dim`` (observation, reward, info) or ``full_dim`` features (continuation, mask); the
        reward loss weighs rows with |reward| >= ``event_threshold`` by ``event_weight``."""
        D, A = self.spec.obs_dim, self.spec.n_actions
        self.reward_kind = reward_kind
        self.reward_event_weight, self.reward_event_threshold = float(event_weight), float(event_threshold)
        self.obs_head = mlp(agent_dim, hidden, D, layers)
        self.reward_head = mlp(agent_dim, hidden, reward_bins if reward_kind == "twohot" else 1, layers)
        if reward_kind == "twohot":  # DreamerV3: start from a uniform categorical, i.e. a predicted reward of 0
            nn.init.zeros_(self.reward_head[-1].weight)
            nn.init.zeros_(self.reward_head[-1].bias)
            self.register_buffer("reward_bins", symlog_bins(reward_bins), persistent=False)  # (K,) not in checkpoints
        self.cont_head = mlp(full_dim, hidden, 1, layers)
        masked = self.spec.action_masked and self.spec.discrete  # continuous actions have no availability
        self.mask_head = mlp(full_dim, hidden, A, layers) if masked else None
        self.action_head = mlp(agent_dim, hidden, A, layers)
        self._build_action_encoding()

    def _build_action_encoding(self) -> None:
        """Continuous specs: the buffers that rescale each agent's actions to [-1, 1] (`_encode_actions`)."""
        if self.spec.discrete:
            return
        low, high = (torch.from_numpy(b) for b in action_bounds(self.spec))  # (N, A)
        own = torch.from_numpy(own_action_dims(self.spec))
        bounded = own & torch.isfinite(low) & torch.isfinite(high) & (high > low)
        scale = torch.where(bounded, 2 / (high - low), torch.ones_like(low))  # unbounded dims pass as they are
        shift = torch.where(bounded, -(high + low) / (high - low), torch.zeros_like(low))
        # not in checkpoints: they follow from the spec, which the checkpoint records
        self.register_buffer("action_scale", scale * own, persistent=False)
        self.register_buffer("action_shift", shift * own, persistent=False)
        self.register_buffer("action_dims", own, persistent=False)  # (N, A) bool

    def _encode_actions(self, actions: Tensor, agent: Tensor | None = None) -> Tensor:
        """What the model reads of actions: (..., N) int choices -> (..., N, A) one-hot; (..., N, A) continuous
        actions -> rescaled from the env's bounds to [-1, 1] (padded dims 0). ``agent`` (B,) int64: rows of single
        agents (..., A) instead of all N, for the continuous rescaling."""
        dtype = self.obs_head[0].weight.dtype
        if self.spec.discrete:
            return F.one_hot(actions.long(), self.spec.n_actions).to(dtype)
        scale, shift = self.action_scale, self.action_shift
        if agent is not None:
            scale, shift = scale[agent], shift[agent]
        return actions.to(dtype) * scale + shift

    def _encode_or_none(self, actions: Tensor, agent: Tensor | None = None) -> Tensor:
        """`_encode_actions` with "no action" as zeros: -1 (discrete) or a NaN row (continuous) where there is none."""
        if self.spec.discrete:
            actions = actions.long()
            return self._encode_actions(actions.clamp(min=0)) * (actions >= 0).unsqueeze(-1).to(self.obs_head[0].weight.dtype)
        none = torch.isnan(actions).any(-1, keepdim=True)
        return torch.where(none, 0.0, self._encode_actions(torch.nan_to_num(actions), agent))

    def _no_action(self, *batch: int) -> Tensor:
        """(*batch, N, A) zeros: what the model reads where no agent acted."""
        w = self.obs_head[0].weight
        return w.new_zeros(*batch, self.spec.n_agents, self.spec.n_actions)

    def _prev_actions(self, actions: Tensor, resets: Tensor, alive: Tensor | None = None) -> Tensor:
        """(B, T, N, A) encoded action of the previous row; zeros at row 0, at episode starts and, with ``alive``
        (B, T, N), for agents absent at row t (an agent present at row t acted at row t - 1)."""
        enc = self._encode_actions(actions)
        prev = torch.zeros_like(enc)
        prev[:, 1:] = enc[:, :-1]
        prev = prev * (~resets.bool())[:, :, None, None]
        return prev if alive is None else prev * alive[..., None].to(prev.dtype)

    def _predict_heads(self, agent_feat: Tensor, full_feat: Tensor, decode: bool) -> Prediction:
        """Reward, continuation, action availability (and observation) from (B, N, F) features."""
        return Prediction(
            reward=self._reward(agent_feat),
            cont=torch.sigmoid(self.cont_head(full_feat).squeeze(-1)),
            action_mask=None if self.mask_head is None else torch.sigmoid(self.mask_head(full_feat)),
            obs=self.obs_head(agent_feat) if decode else None,
        )

    def _reward(self, feat: Tensor) -> Tensor:
        """Predicted reward (...) in env units of features (..., F)."""
        out = self.reward_head(feat)  # (..., 1) or (..., K)
        if self.reward_kind == "twohot":
            return symexp(twohot_decode(out, self.reward_bins))
        return out.squeeze(-1)

    def _check_rewards(self, batch: dict[str, Tensor]) -> None:
        check_rewards(batch)

    def _head_losses(
        self, agent_feat: Tensor, full_feat: Tensor, batch: dict[str, Tensor], compile: bool = False
    ) -> dict[str, Tensor]:
        """The heads' loss terms on posterior features (B, T, N, F) of replay windows: obs, reward, cont,
        action_mask (envs with masks) and info (the previous action, where the agent acted at the previous row).
        ``compile``: through one `torch.compile`d function (the plain one where compiling fails)."""
        return (_compiled_head_losses if compile else head_losses)(self, agent_feat, full_feat, batch)


def check_rewards(batch: dict[str, Tensor]) -> None:
    """Refuse replay windows whose ``reward`` holds NaN or infinities (every model's loss reads them)."""
    if not bool(torch.isfinite(batch["reward"]).all()):
        bad = int((~torch.isfinite(batch["reward"])).sum())
        raise ValueError(f"batch['reward']: expected finite rewards, got {bad} non-finite value(s)")


def head_errors(
    model: HeadsMixin, agent_feat: Tensor, full_feat: Tensor, batch: dict[str, Tensor]
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Each head's loss per row and agent, with the rows it counts on: name -> (error (B, T, N), rows (B, T, N) bool
    or None for all).

    The loss term is the error's mean over its rows (`head_losses`): obs on present agents, reward and continuation
    on every row (the reward's error weighed by the model's ``reward_event_weight`` where |reward| reaches its
    ``reward_event_threshold``), action_mask where the agent acts, info where it acted at the previous row.
    """
    obs, actions, alive = batch["obs"], batch["action"], batch["alive"].bool()
    resets = batch["reset"].bool()
    ended = batch["terminated"].bool() | batch["truncated"].bool()
    acts = alive & ~ended  # (B, T, N) the agent acts at row t
    if model.reward_kind == "twohot":
        reward = twohot_loss(model.reward_head(agent_feat), symlog(batch["reward"]), model.reward_bins)
    else:
        reward = (model.reward_head(agent_feat).squeeze(-1) - batch["reward"]).square()
    if model.reward_event_weight != 1.0:  # rare large rewards (events) weigh more
        event = batch["reward"].abs() >= model.reward_event_threshold
        reward = reward * torch.where(event, model.reward_event_weight, 1.0).to(reward.dtype)
    cont = F.binary_cross_entropy_with_logits(
        model.cont_head(full_feat).squeeze(-1), (alive & ~batch["terminated"].bool()).to(full_feat.dtype), reduction="none"
    )
    errors = {
        "obs": ((model.obs_head(agent_feat) - obs).square().sum(-1), alive),
        "reward": (reward, None),
        "cont": (cont, None),
    }
    if model.mask_head is not None:
        bce = F.binary_cross_entropy_with_logits(
            model.mask_head(full_feat), batch["action_mask"].to(full_feat.dtype), reduction="none"
        )
        errors["action_mask"] = (bce.mean(-1), acts)
    # the agent acted at row t - 1 (a cat, not a slice assignment: Inductor's C++ codegen fails on the latter's bool
    # blend when N = 2, e.g. MaMuJoCo's two-agent tasks)
    acted_before = torch.cat([torch.zeros_like(acts[:, :1]), acts[:, :-1]], dim=1) & ~resets[:, :, None]
    if model.spec.discrete:
        info = F.cross_entropy(
            rearrange(model.action_head(agent_feat), "b t n a -> b a t n"),
            torch.roll(actions, 1, dims=1).long(),
            reduction="none",
        )
    else:  # a unit-variance Gaussian over the rescaled previous action: squared error on the agent's own dims
        target = model._encode_actions(torch.roll(actions, 1, dims=1))
        info = torch.where(model.action_dims, (model.action_head(agent_feat) - target).square(), 0.0).sum(-1)
    errors["info"] = (info, acted_before)
    return errors


def head_losses(model: HeadsMixin, agent_feat: Tensor, full_feat: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """`HeadsMixin._head_losses` of ``model``: each `head_errors` term's mean over its rows (a function of the model,
    so that one compiled version serves every model, deep copies included, with its own weights)."""
    return error_means(head_errors(model, agent_feat, full_feat, batch))


_compiled_head_losses = compiled(head_losses)


def balanced_kl(post_logits: Tensor, prior_logits: Tensor, balance: float, reduce: Literal["sum", "mean"] = "sum"):
    """KL balancing: ``balance`` · KL[sg(q) || p] + (1 - balance) · KL[q || sg(p)], mean over the leading dims.

    Args:
        post_logits, prior_logits: (..., S, K) categoricals q and p.
        reduce: over the S categoricals, "sum" (MAMBA, DreamerV2) or "mean" (MABL's code).

    Returns:
        (balanced KL, the prior-training side KL[sg(q) || p]), scalars.
    """
    scale = kl_scale(post_logits.shape[-2], reduce)
    kl_prior = categorical_kl(post_logits.detach(), prior_logits).mean() * scale  # trains the prior
    kl_post = categorical_kl(post_logits, prior_logits.detach()).mean() * scale  # regularizes the posterior
    return balance * kl_prior + (1 - balance) * kl_post, kl_prior


def kl_scale(categoricals: int, reduce: Literal["sum", "mean"]) -> float:
    """The factor that turns `categorical_kl`'s sum over S categoricals into the ``reduce`` the model uses."""
    return 1.0 / categoricals if reduce == "mean" else 1.0


def categorical_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL[p || q] of (..., S, K) categoricals, summed over S: (...)."""
    log_p, log_q = log_softmax(p_logits), log_softmax(q_logits)
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))
