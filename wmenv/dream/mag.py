"""MAG (Models as Agents, ``papers/mag-models-as-agents.txt``): imagination that plans each step so that the world
model's accumulated error stays small. A plug-in around any `WorldModel` that reports `WorldModel.step_errors`.

Glossary: B worlds, N agents, F per-agent features, A actions, L candidates, H lookahead (states scored per candidate).

MAG leaves the world model's training alone. An error predictor R̂ learns, on real windows, each row's per-agent
world-model loss from the prior features the row was predicted from (`fit_error_predictor`; inputs and targets come
from the same pass). While imagining, at every step (`MAGPlanner.imagine`): sample L candidate next states from the
state and the joint action; roll each H − 1 further steps with the current actor's sampled actions; score each
candidate by R̂ summed over the agents and over its H states; keep, per world, the candidate with the lowest score.
This is random-shooting MPC: only the first step of the best candidate is kept, and the next step plans again.

Where this differs from the authors' code (ZifanWu/MAG), on purpose: the pick is made per world (their code picks one
candidate for the whole batch, kept as ``selection="per_batch"`` to reproduce it); the predictor's inputs and targets
come from one pass; envs without action masks work; the lookahead draws its random numbers from the planner's own
generator and steps a copy of the actor's recurrent state, so the learner's state and random stream are untouched.

The actor's recurrent state in the lookahead: the planner keeps a shadow of it (`MAGPlanner.track`) by running the
policy on the observations and resets the learner saw, which gives the learner's own state because a policy's state
depends only on its observations and resets (`agents.policies.base`), not on the sampled actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from wmenv.checks import check_choice, check_int, check_positive
from wmenv.models.world_model import Prediction, State, WorldModel
from wmenv.optim import adam
from wmenv.tensor_ops import softmax

Selection = Literal["per_world", "per_batch"]


class LookaheadPolicy(Protocol):
    """What the planner needs of the actor: the recurrent-policy interface of `agents.policies` (rows = world × agent)."""

    def initial_state(self, batch: int) -> dict[str, Tensor]: ...

    def step(self, obs: Tensor, state: dict[str, Tensor], resets: Tensor) -> tuple[Tensor, dict[str, Tensor]]: ...


class UniformPolicy:
    """A `LookaheadPolicy` that picks uniformly among the available actions: the lookahead of dreams whose data a
    uniformly random policy collected (e.g. `wmenv.data.collect.random_replay`)."""

    def __init__(self, n_actions: int) -> None:
        self.n_actions = check_int("n_actions", n_actions)

    def initial_state(self, batch: int) -> dict[str, Tensor]:
        """No recurrent state."""
        return {}

    def step(self, obs: Tensor, state: dict[str, Tensor], resets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Equal logits (R, A) for every row of obs (R, F)."""
        return obs.new_zeros(obs.shape[0], self.n_actions), state


@dataclass
class ErrorPredictorConfig:
    """The error predictor R̂ and how it is fitted (the authors' code: MLP 4 × 256, ELU, Huber, 60 × 40 × 20, lr 5e-4)."""

    hidden: int = 256
    """Width of the hidden layers."""
    layers: int = 4
    """Hidden layers (Linear + ELU each), then a Linear to one output per agent row."""
    lr: float = 5e-4
    """Adam learning rate."""
    huber_delta: float = 1.0
    """Huber loss threshold between the squared and the absolute regime."""
    minibatches: int = 60
    """Gradient steps per fit (after each world-model fit)."""
    batch_size: int = 40
    """Windows per minibatch."""
    seq_len: int = 20
    """Rows per window."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "minibatches", "batch_size", "seq_len"):
            check_int(f"ErrorPredictorConfig.{name}", getattr(self, name))
        for name in ("lr", "huber_delta"):
            check_positive(f"ErrorPredictorConfig.{name}", getattr(self, name))


@dataclass
class MAGConfig:
    """MAG's planned imagination (paper Table 1: L = 4–5, H = 6–10 on SMAC maps)."""

    candidates: int = 4
    """L, candidate next states sampled per imagined step (1: plain imagination)."""
    lookahead: int = 6
    """H, states scored per candidate: the candidate and H − 1 further steps under the actor (1: no lookahead)."""
    selection: Selection = "per_world"
    """"per_world": each world keeps its own best candidate (the method); "per_batch": one candidate index for the
    whole batch, the lowest summed score (the authors' released code, only to reproduce it)."""
    predictor: ErrorPredictorConfig = field(default_factory=ErrorPredictorConfig)
    """The error predictor and its fitting."""

    def __post_init__(self) -> None:
        check_int("MAGConfig.candidates", self.candidates)
        check_int("MAGConfig.lookahead", self.lookahead)
        check_choice("MAGConfig.selection", self.selection, ("per_world", "per_batch"))


def model_signature(model: WorldModel) -> str:
    """What an error predictor was fitted for: the model's class, its env and its feature width."""
    return f"{type(model).__name__}|{model.spec.describe()}|F={model.feature_widths()[0]}"


class ErrorPredictor(nn.Module):
    """R̂: per-agent prior features (..., F) -> the predicted world-model loss of that row and agent (...).

    Args:
        model: the world model it predicts the errors of (its features' width and signature are kept).
        config: sizes and fitting; default `ErrorPredictorConfig()`.
    """

    def __init__(self, model: WorldModel, config: ErrorPredictorConfig | None = None) -> None:
        super().__init__()
        if not model.has_step_errors:
            raise ValueError(f"model: MAG needs per-step errors, {type(model).__name__} has no step_errors")
        self.config = c = config if config is not None else ErrorPredictorConfig()
        self.feature_dim = model.feature_widths()[0]
        self.signature = model_signature(model)
        layers: list[nn.Module] = []
        for i in range(c.layers):
            layers += [nn.Linear(self.feature_dim if i == 0 else c.hidden, c.hidden), nn.ELU()]
        self.net = nn.Sequential(*layers, nn.Linear(c.hidden, 1))
        self.to(next(model.parameters()).device)

    def forward(self, features: Tensor) -> Tensor:
        """features (..., F) -> predicted errors (...)."""
        if features.shape[-1] != self.feature_dim:
            raise ValueError(f"features: expected {self.feature_dim} per agent, got shape {tuple(features.shape)}")
        return self.net(features).squeeze(-1)

    def check_model(self, model: WorldModel) -> None:
        """Refuse a model other than the one this predictor was fitted for (class, env, feature width)."""
        if model_signature(model) != self.signature:
            raise ValueError(f"predictor: fitted for {self.signature}, the model is {model_signature(model)}")


def fit_error_predictor(
    predictor: ErrorPredictor,
    model: WorldModel,
    replay: Any,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, list[float]]:
    """Fit R̂ for ``predictor.config.minibatches`` steps to the model's per-row, per-agent loss on real windows
    (Huber, present agents only; the model in eval mode, no dropout). Returns the history of the loss.

    ``generator`` draws the windows and the model's samples (a CPU generator); ``optimizer``: default a fresh Adam.
    """
    predictor.check_model(model)
    c = predictor.config
    device = next(model.parameters()).device
    optimizer = optimizer if optimizer is not None else adam(predictor.parameters(), lr=c.lr)
    was_training = model.training
    model.eval()
    history: dict[str, list[float]] = {"loss": []}
    for _ in range(c.minibatches):
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        batch = replay.sample(c.batch_size, c.seq_len, generator=seed, device=device)
        with torch.no_grad(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)  # the model's latent samples: seeded, and the global stream untouched
            errors = model.step_errors(batch)
        rows = batch["alive"].bool()
        loss = F.huber_loss(predictor(errors.features)[rows], errors.per_agent()[rows], delta=c.huber_delta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(float(loss.detach()))
    model.train(was_training)
    return history


def pick_candidates(score: Tensor, selection: Selection) -> Tensor:
    """Which candidate each world keeps: score (L, B) lookahead scores -> (B,) int64. ``"per_world"``: each world's
    lowest; ``"per_batch"``: the one index whose score summed over the B worlds is lowest, for every world."""
    if selection == "per_world":
        return score.argmin(0)
    return score.sum(1).argmin().expand(score.shape[1])


def select_rows(x: Tensor, pick: Tensor, candidates: int) -> Tensor:
    """Rows (L·B, ...) ordered (l b) -> (B, ...): world b takes candidate ``pick[b]``."""
    stacked = rearrange(x, "(l b) ... -> l b ...", l=candidates)
    return stacked[pick, torch.arange(stacked.shape[1], device=x.device)]


class MAGPlanner:
    """Planned imagination for `wmenv.dream.DreamVecEnv` (``planner=``).

    Args:
        predictor: a fitted `ErrorPredictor` of the dream's model.
        policy: the current actor (`LookaheadPolicy`), read live: its latest weights act in the lookahead.
        config: L, H and the selection; default `MAGConfig()`.
        seed: seeds the lookahead's own generator (the dream's generator draws only the candidates).
    """

    def __init__(
        self, predictor: ErrorPredictor, policy: LookaheadPolicy, config: MAGConfig | None = None, seed: int = 0
    ) -> None:
        self.predictor, self.policy = predictor, policy
        self.config = config if config is not None else MAGConfig()
        self.generator = torch.Generator(device=next(predictor.parameters()).device)
        self.generator.manual_seed(int(seed))
        self._actor: dict[str, Tensor] | None = None

    def attach(self, model: WorldModel) -> None:
        """Check that the planner can serve ``model`` (called by the dream env)."""
        if not model.has_step_errors:
            raise ValueError(f"planner: MAG needs a model with per-step errors, {type(model).__name__} has no step_errors")
        self.predictor.check_model(model)

    def reset(self, worlds: int, n_agents: int) -> None:
        """Start the shadow of the actor's recurrent state for B worlds × N agents."""
        self._actor = self.policy.initial_state(worlds * n_agents)

    @torch.no_grad()
    def track(self, obs: Tensor, resets: Tensor) -> None:
        """Step the shadow actor state on what the learner saw before acting: obs (B, N, F), resets (B, N) bool."""
        if self._actor is None:
            raise RuntimeError("MAGPlanner.track before reset")
        if self.config.candidates == 1 or self.config.lookahead == 1:
            return  # no lookahead reads the actor's state
        _, self._actor = self.policy.step(rearrange(obs, "b n f -> (b n) f"), self._actor, resets.flatten())

    @torch.no_grad()
    def imagine(
        self,
        model: WorldModel,
        state: State,
        actions: Tensor,
        generator: torch.Generator,
        decode: bool,
        present: Tensor,
        view: Any,
    ) -> tuple[State, Prediction]:
        """One planned imagined step of B worlds: the chosen candidate's state and prediction.

        Args:
            state: the worlds' states; actions: (B, N) int64; present: (B, N) bool, the acting agents.
            generator: the dream's generator (draws the L candidates; with L = 1 this is plain imagination).
            decode: decode observations in the predictions.
            view: ``view(state, pred) -> (obs (B, N, F), critic state, action mask (B, N, A) bool)``, as the learner sees.
        """
        c = self.config
        L = c.candidates
        if L == 1:
            return model.imagine(state, actions, generator, decode, present=present)
        tile = lambda x: repeat(x, "b ... -> (l b) ...", l=L)  # noqa: E731
        cand, pred = model.imagine({k: tile(v) for k, v in state.items()}, tile(actions), generator, decode, tile(present))
        score = self._lookahead(model, cand, pred, tile(present), view, decode)  # (L·B,)
        pick = pick_candidates(rearrange(score, "(l b) -> l b", l=L), c.selection)  # (B,)
        chosen = {k: select_rows(v, pick, L) for k, v in cand.items()}
        fields = {f: getattr(pred, f) for f in ("reward", "cont", "action_mask", "obs")}
        return chosen, Prediction(**{f: None if v is None else select_rows(v, pick, L) for f, v in fields.items()})

    def _lookahead(
        self, model: WorldModel, state: State, pred: Prediction, present: Tensor, view: Any, decode: bool
    ) -> Tensor:
        """Predicted errors of each candidate summed over its agents and H states: (L·B,)."""
        c, weight = self.config, present.to(pred.reward.dtype)
        score = (self.predictor(model.features(state)) * weight).sum(-1)
        if c.lookahead == 1:
            return score
        if self._actor is None:
            raise RuntimeError("MAGPlanner: reset before imagining with a lookahead")
        actor = {k: repeat(v, "r ... -> (l r) ...", l=c.candidates) for k, v in self._actor.items()}
        n = present.shape[1]
        no_reset = torch.zeros(present.numel(), dtype=torch.bool, device=present.device)
        for _ in range(c.lookahead - 1):
            obs, _, mask = view(state, pred)
            logits, actor = self.policy.step(rearrange(obs, "b n f -> (b n) f"), actor, no_reset)
            logits = logits.masked_fill(~rearrange(mask, "b n a -> (b n) a"), float("-inf"))
            act = torch.multinomial(softmax(logits), 1, generator=self.generator).view(-1, n)
            state, pred = model.imagine(state, act, self.generator, decode, present=present)
            score = score + (self.predictor(model.features(state)) * weight).sum(-1)
        return score
