"""ONNX export of a world-model agent: its own posterior filter, its message and its actor in one step graph.

Glossary: B batch (agents stepped together), N agent slots, D observation features, A actions, H deterministic
width, S categoricals, K classes, M = S·K + A message width, E communication width, F = H + S·K features,
P attention head width.

One graph computes one decision step of one agent (MAMBA §3.3) for B rows, each row on its own inputs:

    inputs   obs (B, D) float32, action_mask (B, A) bool, reset (B,) bool, agent (B,) int64 (the row's slot),
             messages (B, N, M) float32 in sender slots (the own slot is overwritten), heard (B, N) bool,
             deter (B, H) float32, stoch (B, S·K) float32, prev_action (B,) int64 (-1: none),
             one input per actor state tensor (B, ...) float32 (names as the policy's state dict),
             [noise (B, S, K) float32 uniform in (0, 1), with ``latent="sample"``]
    outputs  logits (B, A) float32 (masked actions -inf), action (B,) int64 (greedy),
             message (B, M) float32 = [new stoch, one_hot(action)], new_deter (B, H), new_stoch (B, S·K),
             new_prev_action (B,) int64 (= action), new_<actor state> per actor state tensor

Continuous actions (a `Box` spec; `ActionIO`): prev_action is (B, A) float32 (a NaN row: none) and enters the model
rescaled from the row's bounds to [-1, 1] (the message carries the same encoding); the first output is ``mean``
(B, A), the actor's Gaussian mean, and ``action`` (B, A) float32 is the mean clipped to the row's bounds (0 on dims
its agent does not have), the loop's greedy evaluation; new_prev_action = action. MABL's graph then also takes
``agent`` (B,) int64 after ``reset`` (its rows' bounds). World-model agents act greedily (no action sampling).

A MAMBA model with Mamba-2 dynamics (`Mamba2FilterStep`, ``RSSMConfig.dynamics="mamba2"``) has no ``deter`` input:
h_t comes from the received messages and the Mamba-2 blocks' states, which replace it as inputs ``wm_conv<i>``
(B, E + 2·d_state, W) and ``wm_ssm<i>`` (B, heads, P, d_state) per block (outputs ``new_wm_conv<i>``,
``new_wm_ssm<i>``, after ``new_stoch``); its posterior reads the observation alone.

MABL's agents need no messages (`AgentLevelStep`): their graph has inputs obs, action_mask, reset, deter_a, stoch_a,
prev_action, the actor's state (and noise), and outputs logits, action, new_deter_a, new_stoch_a, new_prev_action
and the new actor state; ``wmenv.message_dim`` is 0. With Mamba-2 dynamics (`AgentLevelMamba2Step`) the agent level's
block states ``wm_conv<i>`` / ``wm_ssm<i>`` replace deter_a, after prev_action (outputs after new_stoch_a), as for MAMBA.

A graph has no ``alive`` input: it is stepped for agents that have an observation. The library's own per-agent
filters (`wmenv.latent.AgentFilters`) also step an absent agent's row, with its observation embedding zeroed, which a
graph fed a blank observation does not reproduce (the encoder's bias); so an agent that is absent for some steps and
then acts again before a reset is filtered differently from the library from there on. In the envs of this library an
agent absent mid-episode (a finished train, a dead unit) does not act again before the next reset.

The MAMBA step is `MAMBAWorldModel.filter_step` followed by the actor on the features [h_t, z_t]: on ``reset`` the
filter state, previous action, received messages and actor state are the blank ones; the agent puts its own
message [z_{t-1}, a_{t-1}] in its slot, attends over the heard messages, updates its GRU and takes its
posterior z_t from h_t and its observation. The posterior is the argmax one-hot (``latent="mode"``) or a
Gumbel-max sample ``argmax(logits - log(-log noise))`` (``latent="sample"``, the same distribution as the
model's multinomial draw, but reproducible in any runtime). The communication transformer is written out
from its layers' weights (`receive`): only the receiver's row goes through the last layer.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agents.policies.base import RecurrentPolicy
from exports.onnx import EXPORT_FORMAT, OPSET, clip_to_bounds, library_version, spec_diff, state_dynamic, write_graph
from wmenv.envs.spec import action_bounds
from wmenv.models.comm import CommBlock
from wmenv.models.mabl import MABLWorldModel

LATENTS = ("mode", "sample")
FILTER_INPUTS = ("obs", "action_mask", "reset", "agent", "messages", "heard", "deter", "stoch", "prev_action")
"""The graph's inputs before the actor's state tensors (and ``noise``)."""
MAMBA2_FILTER_INPUTS = ("obs", "action_mask", "reset", "agent", "messages", "heard", "stoch", "prev_action")
"""The same for a MAMBA model with Mamba-2 dynamics (`Mamba2FilterStep`); its block states follow, then the actor's."""
AGENT_LEVEL_INPUTS = ("obs", "action_mask", "reset", "deter_a", "stoch_a", "prev_action")
"""The same for MABL's graph (`AgentLevelStep`): no messages, no slot."""
AGENT_LEVEL_MAMBA2_INPUTS = ("obs", "action_mask", "reset", "stoch_a", "prev_action")
"""The same for MABL with Mamba-2 dynamics (`AgentLevelMamba2Step`); its block states follow, then the actor's."""


def _attend(layer: nn.TransformerEncoderLayer, query: Tensor, x: Tensor, bias: Tensor) -> Tensor:
    """Self-attention of ``layer`` for queries (B, Q, E) over keys / values x (B, N, E); bias (B, N) -inf where unheard."""
    attn = layer.self_attn
    heads, width = attn.num_heads, attn.embed_dim
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = rearrange(F.linear(query, w[:width], b[:width]), "b q (h p) -> b h q p", h=heads)
    k = rearrange(F.linear(x, w[width : 2 * width], b[width : 2 * width]), "b n (h p) -> b h p n", h=heads)
    v = rearrange(F.linear(x, w[2 * width :], b[2 * width :]), "b n (h p) -> b h n p", h=heads)
    scores = torch.matmul(q, k) * (1.0 / math.sqrt(width // heads)) + bias[:, None, None, :]  # (B, h, Q, N)
    out = rearrange(torch.matmul(torch.softmax(scores, -1), v), "b h q p -> b q (h p)")  # (B, Q, E)
    return attn.out_proj(out)


def _layer(layer: nn.TransformerEncoderLayer, x: Tensor, bias: Tensor, slot: Tensor | None) -> Tensor:
    """One encoder layer (eval mode) over x (B, N, E); with ``slot`` (B, N) float one-hot only that row: (B, 1, E)."""
    feed = lambda h: layer.linear2(layer.activation(layer.linear1(h)))  # noqa: E731
    row = x if slot is None else (x * slot.unsqueeze(-1)).sum(1, keepdim=True)  # (B, Q, E)
    if layer.norm_first:
        keys = layer.norm1(x)
        query = keys if slot is None else layer.norm1(row)
        row = row + _attend(layer, query, keys, bias)
        return row + feed(layer.norm2(row))
    row = layer.norm1(row + _attend(layer, row, x, bias))
    return layer.norm2(row + feed(row))


def receive(comm: CommBlock, messages: Tensor, heard: Tensor, receiver: Tensor) -> Tensor:
    """`CommBlock.receive` in eval mode, written out from the layers' weights (exports without a padding-mask op).

    Args:
        comm: the communication block.
        messages: (B, N, M) float, in sender slots.
        heard: (B, N) bool, the slots the receiver hears (its own is added).
        receiver: (B,) int64, the receiver's slot.

    Returns:
        (B, E): the receiver's row of the transformer's output.
    """
    n = messages.shape[1]
    slot = receiver.unsqueeze(-1) == torch.arange(n, device=messages.device)  # (B, N)
    bias = torch.where(heard.bool() | slot, 0.0, float("-inf"))  # (B, N)
    x = comm.embed(messages) + comm.position.weight[:n]  # (B, N, E)
    layers = comm.encoder.layers
    for i, layer in enumerate(layers):
        x = _layer(layer, x, bias, slot.to(x.dtype) if i == len(layers) - 1 else None)
    if comm.encoder.norm is not None:
        x = comm.encoder.norm(x)
    return comm.norm(x[:, 0])


def _onehot(index: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """(...) int64 -> (..., classes) one-hot; indices outside [0, classes) give zeros."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).to(dtype)


def _posterior(logits: Tensor, latent: str, noise: Tensor | None) -> Tensor:
    """(B, S·K) one-hot posterior of logits (B, S, K): the argmax ("mode") or a Gumbel-max sample ("sample")."""
    if latent == "sample":
        if noise is None:
            raise ValueError("noise: expected (B, S, K) uniforms in (0, 1) for latent='sample', got None")
        tiny = torch.finfo(noise.dtype).tiny
        logits = logits - torch.log(-torch.log(noise.clamp(tiny, 1.0 - 1e-7)))
    return rearrange(_onehot(logits.argmax(-1), logits.shape[-1], logits.dtype), "b s k -> b (s k)")


class ActionIO(nn.Module):
    """How a world-model agent's graph reads actions and makes them, as the model and the loop do.

    Discrete: the previous action enters as a one-hot (-1 or a reset row: zeros); the actor's logits are masked (-inf)
    and the action is their argmax. Continuous: the previous action (B, A) enters rescaled from the row's bounds to
    [-1, 1] (a NaN row or a reset row: none, zeros; `HeadsMixin._encode_or_none`); the actor's output is the Gaussian's
    mean and the action is the mean clipped to the row's bounds, 0 on dims the row's agent does not have (the loop's
    greedy evaluation).

    Args:
        model: the world model (its ``spec`` and, continuous, its ``action_scale`` / ``action_shift`` buffers).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        spec = model.spec
        self.continuous, self.n_actions = not spec.discrete, spec.n_actions
        if self.continuous:
            low, high = action_bounds(spec)
            self.register_buffer("scale", model.action_scale.detach().float().clone())  # (N, A)
            self.register_buffer("shift", model.action_shift.detach().float().clone())
            self.register_buffer("low", torch.from_numpy(low))  # (N, A); 0 on padded dims
            self.register_buffer("high", torch.from_numpy(high))

    def encode(self, action: Tensor, reset: Tensor | None, agent: Tensor | None, dtype: torch.dtype) -> Tensor:
        """(B, A): what the model reads of ``action`` (B,) int64 or (B, A) float; "none" (and ``reset`` rows) -> 0."""
        if not self.continuous:
            return _onehot(action if reset is None else action.masked_fill(reset, -1), self.n_actions, dtype)
        none = torch.isnan(action).any(-1, keepdim=True)
        if reset is not None:
            none = none | reset.unsqueeze(-1)
        encoded = torch.where(torch.isnan(action), 0.0, action) * self.scale[agent] + self.shift[agent]
        return torch.where(none, 0.0, encoded).to(dtype)

    def act(self, out: Tensor, action_mask: Tensor, agent: Tensor | None) -> tuple[Tensor, Tensor]:
        """The first output (masked logits, or the mean) and the greedy action of the actor's output ``out`` (B, A)."""
        if not self.continuous:
            out = out.masked_fill(~action_mask, float("-inf"))
            return out, out.argmax(-1)
        return out, clip_to_bounds(out, action_mask, self.low[agent], self.high[agent])


def _act(policy: RecurrentPolicy, names: list[str], features: Tensor, state: tuple[Tensor, ...], reset: Tensor,
         action_mask: Tensor, io: ActionIO, agent: Tensor | None) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """The actor's first output (masked logits or mean) (B, A), greedy action and new state tensors, from the
    features (B, F)."""
    out, new = policy.step(features, dict(zip(names, state)), reset)
    out, action = io.act(out, action_mask, agent)
    return out, action, [new[n] for n in names]


class WorldModelStep(nn.Module):
    """The module that is exported (and the PyTorch reference of the graph, in eval mode); see the module docstring.

    Args:
        model: a `MAMBAWorldModel` with GRU dynamics (its ``rssm`` submodules and ``spec`` are used; the heads are not).
        policy: the actor, on observations of width F = H + S·K.
        state_names: the actor's state names, in input order.
        latent: ``"mode"`` or ``"sample"``.
    """

    def __init__(self, model: nn.Module, policy: RecurrentPolicy, state_names: list[str], latent: str) -> None:
        super().__init__()
        rssm = model.rssm
        self.comm, self.obs_encoder, self.post_net = rssm.comm, rssm.obs_encoder, rssm.post_net
        self.cell = getattr(rssm, "cell", None)  # the GRU (None for Mamba-2 dynamics, `Mamba2FilterStep`)
        self.policy, self.state_names, self.latent = policy, state_names, latent
        self.n_agents, self.classes = rssm.n_agents, rssm.config.classes
        self.io = ActionIO(model)

    def _receive(
        self, reset: Tensor, agent: Tensor, messages: Tensor, heard: Tensor, stoch: Tensor, prev_action: Tensor
    ) -> Tensor:
        """(B, E): the communication block's output for each row's slot, once the row put its own message [z_{t-1},
        a_{t-1} as the model reads it] there (``stoch`` already blank on reset rows, which also receive no other
        message)."""
        own = torch.cat([stoch, self.io.encode(prev_action, reset, agent, stoch.dtype)], -1)  # (B, M); none: zeros
        slot = agent.unsqueeze(-1) == torch.arange(self.n_agents, device=stoch.device)  # (B, N)
        messages = torch.where(slot.unsqueeze(-1), own.unsqueeze(1), messages.masked_fill(reset[:, None, None], 0.0))
        return receive(self.comm, messages, heard, agent)

    def _decide(
        self,
        deter: Tensor,
        post_input: Tensor,
        noise: Tensor | None,
        actor_state: tuple[Tensor, ...],
        reset: Tensor,
        action_mask: Tensor,
        agent: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
        """The posterior z_t from ``post_input`` and the actor on [h_t, z_t]: masked logits (or the mean), greedy
        action, the message [z_t, the action as the model reads it], z_t and the actor's new state tensors."""
        logits = rearrange(self.post_net(post_input), "b (s k) -> b s k", k=self.classes)
        stoch = _posterior(logits, self.latent, noise)
        features = torch.cat([deter, stoch], -1)
        out, action, new = _act(self.policy, self.state_names, features, actor_state, reset, action_mask, self.io, agent)
        return out, action, torch.cat([stoch, self.io.encode(action, None, agent, stoch.dtype)], -1), stoch, new

    def forward(
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        agent: Tensor,
        messages: Tensor,
        heard: Tensor,
        deter: Tensor,
        stoch: Tensor,
        prev_action: Tensor,
        actor_state: tuple[Tensor, ...],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """See the module docstring for inputs and outputs."""
        reset = reset.bool()  # masked_fill with constants: no zeros_like / full_like ops in the graph
        deter, stoch = deter.masked_fill(reset.unsqueeze(-1), 0.0), stoch.masked_fill(reset.unsqueeze(-1), 0.0)
        deter = self.cell(self._receive(reset, agent, messages, heard, stoch, prev_action), deter)  # (B, H)
        post_input = torch.cat([deter, self.obs_encoder(obs)], -1)
        out, action, message, stoch, new = self._decide(deter, post_input, noise, actor_state, reset, action_mask, agent)
        return out, action, message, deter, stoch, action, *new


def _split_states(states: list[Tensor], reset: Tensor, layers: int) -> tuple[list[tuple[Tensor, Tensor]], tuple[Tensor, ...]]:
    """A Mamba-2 graph's state list -> its blocks' (conv, ssm) pairs, zeroed on ``reset`` rows (B,), and the actor's
    state tensors that follow them."""
    blocks = [t.masked_fill(reset.view(-1, *[1] * (t.dim() - 1)), 0.0) for t in states[: 2 * layers]]
    return [(blocks[2 * i], blocks[2 * i + 1]) for i in range(layers)], tuple(states[2 * layers :])


class Mamba2FilterStep(WorldModelStep):
    """The exported step of a `MAMBAWorldModel` with Mamba-2 dynamics (`wmenv.models.rssm_mamba2`).

    Its filter state is z_{t-1} and each Mamba-2 block's (conv, ssm) state (``wm_conv<i>``, ``wm_ssm<i>``): h_t comes
    from those and the received messages, and the posterior reads the observation alone. ``states`` holds the blocks'
    states (2 per block) followed by the actor's.

    Args:
        model: a `MAMBAWorldModel` with ``RSSMConfig.dynamics="mamba2"``.
        policy, state_names, latent: as `WorldModelStep`.
    """

    def __init__(self, model: nn.Module, policy: RecurrentPolicy, state_names: list[str], latent: str) -> None:
        super().__init__(model, policy, state_names, latent)
        self.dynamics, self.layers = model.rssm.dynamics, model.rssm.config.ssm_layers

    def forward(  # type: ignore[override]
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        agent: Tensor,
        messages: Tensor,
        heard: Tensor,
        stoch: Tensor,
        prev_action: Tensor,
        states: list[Tensor],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """See the module docstring for inputs and outputs."""
        reset = reset.bool()
        stoch = stoch.masked_fill(reset.unsqueeze(-1), 0.0)
        pairs, actor_state = _split_states(states, reset, self.layers)
        deter, pairs = self.dynamics.step(self._receive(reset, agent, messages, heard, stoch, prev_action), pairs)
        out, action, message, stoch, new = self._decide(deter, self.obs_encoder(obs), noise, actor_state, reset,
                                                        action_mask, agent)  # fmt: skip
        return out, action, message, stoch, *[t for pair in pairs for t in pair], action, *new


class AgentLevelStep(nn.Module):
    """MABL's execution step (no messages, no global state): its agent GRU and posterior, then the actor.

    Inputs obs (B, D), action_mask (B, A), reset (B,), deter_a (B, H_a), stoch_a (B, S·K), prev_action (B,), the
    actor's state tensors and, with ``latent="sample"``, noise (B, S, K); outputs logits, action, new_deter_a,
    new_stoch_a, new_prev_action and the new actor state (`MABLWorldModel.filter_step` followed by the actor).
    Continuous actions: `SlottedAgentLevelStep`.

    Args:
        model: a `MABLWorldModel` (its agent-level modules and ``spec`` are used).
        policy, state_names, latent: as in `WorldModelStep`.
    """

    def __init__(self, model: nn.Module, policy: RecurrentPolicy, state_names: list[str], latent: str) -> None:
        super().__init__()
        self.obs_encoder, self.agent_post = model.obs_encoder, model.agent_post
        if _dynamics(model) == "gru":
            self.agent_in, self.agent_cell = model.agent_in, model.agent_cell
        else:
            self.dynamics, self.layers = model.agent_dynamics, model.config.ssm_layers
        self.policy, self.state_names, self.latent = policy, state_names, latent
        self.classes = model.config.classes
        self.io = ActionIO(model)

    def forward(
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        deter_a: Tensor,
        stoch_a: Tensor,
        prev_action: Tensor,
        actor_state: tuple[Tensor, ...],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """See the class docstring for inputs and outputs."""
        return self._step(obs, action_mask, reset, None, deter_a, stoch_a, prev_action, actor_state, noise)

    def _step(
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        agent: Tensor | None,
        deter_a: Tensor,
        stoch_a: Tensor,
        prev_action: Tensor,
        actor_state: tuple[Tensor, ...],
        noise: Tensor | None,
    ) -> tuple[Tensor, ...]:
        reset = reset.bool()
        deter, stoch = deter_a.masked_fill(reset.unsqueeze(-1), 0.0), stoch_a.masked_fill(reset.unsqueeze(-1), 0.0)
        prev = self.io.encode(prev_action, reset, agent, stoch.dtype)  # none: zeros
        deter = self.agent_cell(self.agent_in(torch.cat([prev, stoch], -1)), deter)
        embed = self.obs_encoder(obs)
        logits = rearrange(self.agent_post(torch.cat([deter, embed], -1)), "b (s k) -> b s k", k=self.classes)
        stoch = _posterior(logits, self.latent, noise)
        features = torch.cat([deter, stoch], -1)
        out, action, new = _act(self.policy, self.state_names, features, actor_state, reset, action_mask, self.io, agent)
        return out, action, deter, stoch, action, *new


class SlottedAgentLevelStep(AgentLevelStep):
    """`AgentLevelStep` for continuous actions: an ``agent`` (B,) int64 input after ``reset`` gives each row's slot (its
    bounds); prev_action is (B, A) float (a NaN row: none); outputs mean, action (the mean clipped to the row's bounds),
    and the rest as `AgentLevelStep`."""

    def forward(  # type: ignore[override]
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        agent: Tensor,
        deter_a: Tensor,
        stoch_a: Tensor,
        prev_action: Tensor,
        actor_state: tuple[Tensor, ...],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """See the class docstring for inputs and outputs."""
        return self._step(obs, action_mask, reset, agent, deter_a, stoch_a, prev_action, actor_state, noise)


class AgentLevelMamba2Step(AgentLevelStep):
    """MABL's execution step with Mamba-2 dynamics: the agent level's blocks (their states ``wm_conv<i>`` /
    ``wm_ssm<i>`` in place of deter_a) and its posterior from the observation alone, then the actor.

    Inputs obs, action_mask, reset, stoch_a, prev_action, ``states`` (the blocks' states, 2 per block, then the
    actor's) and, with ``latent="sample"``, noise; outputs logits, action, new_stoch_a, the new block states,
    new_prev_action and the new actor state (`MABLWorldModel.filter_step` followed by the actor). Continuous
    actions: `SlottedAgentLevelMamba2Step`.

    Args:
        model: a `MABLWorldModel` with ``MABLConfig.dynamics="mamba2"``.
        policy, state_names, latent: as in `WorldModelStep`.
    """

    def forward(  # type: ignore[override]
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        stoch_a: Tensor,
        prev_action: Tensor,
        states: list[Tensor],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """See the class docstring for inputs and outputs."""
        return self._blocks_step(obs, action_mask, reset, None, stoch_a, prev_action, states, noise)

    def _blocks_step(
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        agent: Tensor | None,
        stoch_a: Tensor,
        prev_action: Tensor,
        states: list[Tensor],
        noise: Tensor | None,
    ) -> tuple[Tensor, ...]:
        reset = reset.bool()
        stoch = stoch_a.masked_fill(reset.unsqueeze(-1), 0.0)
        pairs, actor_state = _split_states(states, reset, self.layers)
        prev = self.io.encode(prev_action, reset, agent, stoch.dtype)  # none: zeros
        deter, pairs = self.dynamics.step(torch.cat([prev, stoch], -1), pairs)
        logits = rearrange(self.agent_post(self.obs_encoder(obs)), "b (s k) -> b s k", k=self.classes)
        stoch = _posterior(logits, self.latent, noise)
        features = torch.cat([deter, stoch], -1)
        out, action, new = _act(self.policy, self.state_names, features, actor_state, reset, action_mask, self.io, agent)
        return out, action, stoch, *[t for pair in pairs for t in pair], action, *new


class SlottedAgentLevelMamba2Step(AgentLevelMamba2Step):
    """`AgentLevelMamba2Step` for continuous actions: an ``agent`` (B,) int64 input after ``reset`` (as
    `SlottedAgentLevelStep`)."""

    def forward(  # type: ignore[override]
        self,
        obs: Tensor,
        action_mask: Tensor,
        reset: Tensor,
        agent: Tensor,
        stoch_a: Tensor,
        prev_action: Tensor,
        states: list[Tensor],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """See the class docstring for inputs and outputs."""
        return self._blocks_step(obs, action_mask, reset, agent, stoch_a, prev_action, states, noise)


def _dynamics(model: nn.Module) -> str:
    """A MAMBA or MABL model's sequence model over time (``dynamics`` of its config)."""
    return model.config.dynamics if isinstance(model, MABLWorldModel) else model.rssm.config.dynamics


def _block_states(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The Mamba-2 filter's block state inputs: (``wm_conv<i>`` / ``wm_ssm<i>``, shape after B) per block."""
    dynamics = model.agent_dynamics if isinstance(model, MABLWorldModel) else model.rssm.dynamics
    pairs = dynamics.state_shapes()
    return [(f"wm_{kind}{i}", shape) for i, pair in enumerate(pairs) for kind, shape in zip(("conv", "ssm"), pair)]


def _filter_inputs(model: nn.Module) -> tuple[str, ...]:
    """The graph's inputs before the state list (and ``noise``) for this model."""
    gru = _dynamics(model) == "gru"
    if isinstance(model, MABLWorldModel):
        inputs = AGENT_LEVEL_INPUTS if gru else AGENT_LEVEL_MAMBA2_INPUTS
        return inputs if model.spec.discrete else (*inputs[:3], "agent", *inputs[3:])  # continuous: each row's slot
    return FILTER_INPUTS if gru else MAMBA2_FILTER_INPUTS


def _check(model: Any, policy: Any, spec: Any | None, latent: str) -> None:
    """Refuse a model without an execution filter we export, a policy that does not fit it, another env or latent."""
    mamba = isinstance(getattr(getattr(model, "rssm", None), "comm", None), CommBlock)
    if not isinstance(model, nn.Module) or not (mamba or isinstance(model, MABLWorldModel)):
        raise TypeError(f"model: expected a MAMBAWorldModel (an RSSM with a CommBlock filter) or a MABLWorldModel, "
                        f"got {type(model).__name__}")  # fmt: skip
    if not isinstance(policy, RecurrentPolicy):
        raise TypeError(
            f"policy: expected a RecurrentPolicy (GRUPolicy, MambaPolicy, SPMambaPolicy), got {type(policy).__name__}"
        )
    if latent not in LATENTS:
        raise ValueError(f"latent: expected one of {list(LATENTS)}, got {latent!r}")
    F_, A = model.feature_widths()[0], model.spec.n_actions
    if (policy.obs_dim, policy.n_actions) != (F_, A):
        raise ValueError(f"policy: expected obs_dim={F_} (the model's agent features) and n_actions={A}, got "
                         f"obs_dim={policy.obs_dim}, n_actions={policy.n_actions}")  # fmt: skip
    if spec is not None and spec.describe() != model.spec.describe():
        raise ValueError(f"spec: the model was made for {spec_diff(model.spec.describe(), spec.describe())}")
    inputs = _filter_inputs(model)
    clash = sorted(set(policy.initial_state(1)) & {*inputs, "noise"})
    if clash:
        raise ValueError(f"policy: its state names {clash} clash with the graph's inputs {list(inputs)}")


def export_wm_agent(
    model: nn.Module,
    policy: RecurrentPolicy,
    path: str | Path,
    spec: Any | None = None,
    latent: Literal["mode", "sample"] = "sample",
    opset: int = OPSET,
) -> Path:
    """Export a world-model agent's step (filter + actor) to an ONNX file; see the module docstring for the graph.

    Model and policy are copied, put in eval mode and exported in float32 on the CPU.

    Args:
        model: a `MAMBAWorldModel` or a `MABLWorldModel`; its env spec is recorded so `OnnxAgent` can refuse another env.
        policy: the actor, a `RecurrentPolicy` on the model's features (obs_dim F = H + S·K).
        path: the ``.onnx`` file to write.
        spec: when given, must be the model's env spec.
        latent: ``"sample"`` (Gumbel-max with a ``noise`` input) or ``"mode"`` (argmax, no noise).
        opset: ONNX opset (18 or later).

    Returns:
        ``path``.

    Raises:
        TypeError: ``model`` is neither MAMBA's nor MABL's, or ``policy`` is not a `RecurrentPolicy`.
        ValueError: the policy does not fit the model, ``spec`` is another env, or an unknown ``latent``.
        RuntimeError: the step cannot be exported, with the exporter's reason.
    """
    _check(model, policy, spec, latent)
    path = Path(path)
    model, policy = copy.deepcopy(model).float().cpu().eval(), copy.deepcopy(policy).float().cpu().eval()
    state0 = policy.initial_state(2)
    names = list(state0)
    spec = model.spec
    D, A, N = spec.obs_dim, spec.n_actions, spec.n_agents
    continuous = not spec.discrete
    first = (torch.zeros(2, D), torch.ones(2, A, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    slots = torch.tensor([0, N - 1])
    no_action = torch.full((2, A), float("nan")) if continuous else torch.full((2,), -1)  # "none yet"
    filter_inputs = _filter_inputs(model)
    if isinstance(model, MABLWorldModel):
        c, M = model.config, 0
        S, K = c.stoch, c.classes
        first = (*first, slots) if continuous else first  # continuous: each row's slot, for its bounds
        if _dynamics(model) == "gru":
            filter_state = [["deter_a", [c.agent_deter]], ["stoch_a", [S * K]]]
            graph: nn.Module = (SlottedAgentLevelStep if continuous else AgentLevelStep)(model, policy, names, latent)
            args: tuple[Any, ...] = (*first, torch.zeros(2, c.agent_deter), torch.zeros(2, S * K), no_action)
            new_filter = ["new_deter_a", "new_stoch_a"]
        else:  # Mamba-2: the agent level's block states go first in the state list
            blocks = _block_states(model)
            filter_state = [["stoch_a", [S * K]], *([n, list(shape)] for n, shape in blocks)]
            step = SlottedAgentLevelMamba2Step if continuous else AgentLevelMamba2Step
            graph = step(model, policy, names, latent)
            args = (*first, torch.zeros(2, S * K), no_action)
            new_filter = ["new_stoch_a", *(f"new_{n}" for n, _ in blocks)]
            state0 = {**{n: torch.zeros(2, *shape) for n, shape in blocks}, **state0}
    else:
        c, M = model.rssm.config, model.message_dim
        S, K = c.stoch, c.classes
        talk = (slots, torch.zeros(2, N, M), torch.ones(2, N, dtype=torch.bool))
        if _dynamics(model) == "gru":
            filter_state = [["deter", [c.deter]], ["stoch", [S * K]]]
            graph = WorldModelStep(model, policy, names, latent)
            args = (*first, *talk, torch.zeros(2, c.deter), torch.zeros(2, S * K), no_action)
            new_filter = ["message", "new_deter", "new_stoch"]
        else:  # Mamba-2: the blocks' states go in the state list, before the actor's
            blocks = _block_states(model)
            filter_state = [["stoch", [S * K]], *([n, list(shape)] for n, shape in blocks)]
            graph = Mamba2FilterStep(model, policy, names, latent)
            args = (*first, *talk, torch.zeros(2, S * K), no_action)
            new_filter = ["message", "new_stoch", *(f"new_{n}" for n, _ in blocks)]
            state0 = {**{n: torch.zeros(2, *shape) for n, shape in blocks}, **state0}
    graph = graph.eval()
    listed = list(state0)  # the state list's tensors: the filter's blocks (Mamba-2), then the actor's
    args = (*args, list(state0.values()))
    batch = torch.export.Dim("batch", min=1)
    dynamic: tuple[Any, ...] = (*({0: batch} for _ in filter_inputs), state_dynamic(listed, batch))
    inputs = [*filter_inputs, *listed]
    outputs = ["mean" if continuous else "logits", "action", *new_filter, "new_prev_action", *(f"new_{n}" for n in names)]
    if latent == "sample":
        args, dynamic, inputs = (*args, torch.full((2, S, K), 0.5)), (*dynamic, {0: batch}), [*inputs, "noise"]
    meta = {
        "wmenv.format": str(EXPORT_FORMAT),
        "wmenv.kind": "world_model",
        "wmenv.version": library_version(),
        "wmenv.policy": type(policy).__name__,
        "wmenv.model": type(model).__name__,
        "wmenv.obs_dim": str(D),
        "wmenv.n_actions": str(A),
        "wmenv.n_agents": str(N),
        "wmenv.message_dim": str(M),
        "wmenv.filter_state": json.dumps(filter_state),
        "wmenv.latent_shape": json.dumps([S, K]),
        "wmenv.latent": latent,
        "wmenv.state": json.dumps([[n, list(state0[n].shape[1:])] for n in names]),
        "wmenv.sampling": json.dumps(False),
        "wmenv.observation_space": json.dumps({"shape": [D], "dtype": "float32"}),
        "wmenv.action_space": json.dumps({"continuous": A} if continuous else {"n": A}),
        "wmenv.continuous": json.dumps(continuous),
        "wmenv.env": json.dumps(spec.describe()),
    }
    what = f"model: {type(model).__name__} filter + {type(policy).__name__}.step"
    return write_graph(graph, args, dynamic, inputs, outputs, meta, path, what, opset)
