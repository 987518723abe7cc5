"""`AgentFilters`: every agent's own copy of the world model's posterior filter, for W real worlds at once.

Glossary: W worlds (env copies), N agents, D observation features, F features, M message width.

MAMBA's execution (§3.3, Figure 2): at each step every present agent broadcasts its message
(z_{t-1}, a_{t-1}); each agent hears the messages of the present agents (or, with ``hears``, only of its
neighbours), updates its own filter with them and its own observation, and acts on the features [h_t, z_t].
The W·N filters run as one batch of rows, each row on its own inputs only (`WorldModel.filter_step`), so
the result is what N separate agents exchanging messages would compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

from wmenv.models.world_model import State, WorldModel, none_where
from wmenv.tensor_ops import to_device


class AgentFilters:
    """The N agents' filters in W worlds.

    Args:
        model: a `WorldModel` with an execution-time filter (`filter_step`); put in eval mode.
        num_worlds: W.
        seed: seeds the filters' latent samples (one `torch.Generator`).
    """

    def __init__(self, model: WorldModel, num_worlds: int, seed: int = 0) -> None:
        if isinstance(num_worlds, bool) or not isinstance(num_worlds, int) or num_worlds < 1:
            raise ValueError(f"num_worlds: expected an integer >= 1, got {num_worlds!r}")
        self.model, self.spec, self.num_worlds = model.eval(), model.spec, num_worlds
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        n = self.spec.n_agents
        self._agent = torch.arange(n, device=self.device).repeat(num_worlds)  # (W·N,) rows world-major
        self.state: State = model.filter_initial(num_worlds * n)
        self.discrete = bool(self.spec.discrete)
        if self.discrete:  # -1: none
            self.prev_action = torch.full((num_worlds * n,), -1, dtype=torch.long, device=self.device)
        else:  # (W·N, A) float, a NaN row: none
            self.prev_action = torch.full((num_worlds * n, self.spec.n_actions), float("nan"), device=self.device)
        self.features: Tensor | None = None

    def seed(self, seed: int) -> None:
        """Re-seed the latent samples."""
        self.generator.manual_seed(int(seed))

    _CARRIED = ("state", "prev_action", "features")
    """What changes from step to step (with the generator); the model is shared, not part of the filters' state."""

    def get_state(self) -> dict[str, Any]:
        """The filters' recurrent states, last actions, features and random stream, for `set_state` (e.g. in a
        checkpoint, so a resumed run goes on filtering where it stopped)."""
        return {"generator": self.generator.get_state(), **{k: getattr(self, k) for k in self._CARRIED}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `get_state` (of filters of the same model and number of worlds)."""
        keys = sorted({"generator", *self._CARRIED})
        if not isinstance(state, dict) or sorted(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected AgentFilters.get_state() keys {keys}, got {got}")
        got, expected = tuple(state["prev_action"].shape), tuple(self.prev_action.shape)
        if got != expected:
            raise ValueError(f"state: filters with last actions of shape {got}, expected {expected}")
        self.generator.set_state(state["generator"].cpu())
        for k in self._CARRIED:
            setattr(self, k, to_device(state[k], self.device))

    def step(self, obs, reset, alive, hears=None) -> Tensor:
        """Advance every agent's filter by one env step; returns the features (W, N, F).

        Args:
            obs: (W, N, D) observations (anything for absent agents).
            reset: (W,) bool, the world's episode starts at this step.
            alive: (W, N) bool, the agent is present (has an observation) and so sends its message.
            hears: (W, N, N) bool, [w, i, j] agent i may hear agent j (e.g. neighbours); None: everyone.
        """
        W, N, D = self.num_worlds, self.spec.n_agents, self.spec.obs_dim
        obs = self._tensor("obs", obs, (W, N, D), self.dtype)
        reset = self._tensor("reset", reset, (W,), torch.bool)
        alive = self._tensor("alive", alive, (W, N), torch.bool)
        rows_reset = repeat(reset, "w -> (w n)", n=N)
        if self.model.training:  # e.g. fitted since the last step: no dropout while filtering
            self.model.eval()
        with torch.no_grad():
            # filter_step blanks a reset row's state, previous action and received messages (a whole world resets)
            sent = self.model.message(self.state, self.prev_action, self._agent)  # (W·N, M)
            messages = repeat(sent, "(w j) m -> (w i) j m", w=W, i=N)
            heard = repeat(alive, "w j -> (w i) j", i=N)  # absent agents send nothing
            if hears is not None:
                heard = heard & rearrange(self._tensor("hears", hears, (W, N, N), torch.bool), "w i j -> (w i) j")
            self.state, feat = self.model.filter_step(
                self.state, rearrange(obs, "w n d -> (w n) d"), self.prev_action, rows_reset, self._agent, messages,
                heard, rearrange(alive, "w n -> (w n)"), self.generator,
            )  # fmt: skip
        self.prev_action = none_where(rows_reset, self.prev_action)  # until `record`: no action in the new episode
        self.features = rearrange(feat, "(w n) f -> w n f", w=W)
        return self.features

    def observe_vec(self, step, first: bool = False) -> Tensor:
        """Filter a `VecStep` of W env copies: copies whose episode starts now (all if ``first``, else ``step.done``,
        auto-reset) restart their filters; present agents are ``step.alive``. Returns the features (W, N, F)."""
        reset = np.ones(self.num_worlds, dtype=bool) if first else np.asarray(step.done, dtype=bool)
        return self.step(step.obs, reset, step.alive)

    def record(self, actions, acted) -> None:
        """Remember the actions (W, N) int (or (W, N, A) float) of the agents that acted (W, N) bool (the others: none)."""
        W, N = self.num_worlds, self.spec.n_agents
        if self.discrete:
            actions = self._tensor("actions", actions, (W, N), torch.long).reshape(-1)
        else:
            actions = self._tensor("actions", actions, (W, N, self.spec.n_actions), torch.float32).flatten(0, 1)
        acted = self._tensor("acted", acted, (W, N), torch.bool).reshape(-1)
        self.prev_action = none_where(~acted, actions)

    def critic_features(self) -> Tensor:
        """(W, N·F): every agent's current features, the model's centralized view."""
        if self.features is None:
            raise RuntimeError("critic_features() before the first step()")
        return rearrange(self.features, "w n f -> w (n f)")

    def _tensor(self, name: str, value, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a tensor or NumPy array of shape {shape}, got {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
        if dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
        return value.to(self.device, dtype)
