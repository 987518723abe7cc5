"""The Self-Predictive Mamba policy (SP-Mamba, ``papers/sp-mamba.txt``), eq. (4a)-(4e) and (5)-(7).

Glossary: B batch (env × agent rows), T time, D observation features, d ``d_model``,
Z encoded features (d·ε for the MLP-VAE, G·C for the categorical / SimNorm VAEs), G groups,
C classes per group, k observation window, A actions.

    z_t   = ENC(o_t)                              single-layer MLP (4a), one of three VAE kinds
    x_t   = SiLU(CNN(z_{t-k+1:t}))                causal window of the last k encodings (zeros before an episode start)
    y_t   = LayerNorm(Mamba(x_t))                 the block gates its SSM output with SiLU(MLP(x_t)) (eq. 5)
    u_t   ~ softmax(ACT(y_t)) over available actions   (4d)
    ẑ_t+1 = DEC(y_t, onehot u_t)                  single-layer MLP (4e)
    L_pred = max(μ, KL[sg softmax z_t+1 || softmax ẑ_t+1])   added to the PPO actor loss with weight α (eq. 6-7)

The KL is taken per group (one group of Z classes for the MLP-VAE). Switches for the paper's
alternatives: ``encoder="categorical"`` (8×8 one-hot samples, straight-through gradients) or
``"simnorm"`` (8×8 softmax groups, temperature τ) (§5.3.1); L_rep (eq. 12a, weight β) and L_rec
(eq. 12b, weight σ) (§5.3.2); ``pred_from="h"`` (decode from the SSM output C h_t + D x_t, the
d·ε-wide "hidden state" of §5.4) or ``"raw"`` (from y_t before the LayerNorm). The critic is the
MAPPO GRU critic (§4). The state is ``{"conv", "ssm"}`` of the Mamba block plus, for k > 1,
``{"z_hist": (B, k-1, Z)}``, the previous k-1 encodings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agents.policies.base import PolicyState, RecurrentPolicy, masked_mean
from agents.policies.gru import init_linear_
from agents.policies.mamba import MambaStateMixin
from wmenv.checks import check_choice, check_int
from wmenv.models.ssm import Mamba
from wmenv.models.ssm.conv import window_taps
from wmenv.models.ssm.kernels import Backend
from wmenv.models.ssm.scan import ScanImpl
from wmenv.tensor_ops import log_softmax, softmax

EncoderKind = Literal["mlp", "categorical", "simnorm"]
PredFrom = Literal["y", "h", "raw"]


@dataclass
class SPMambaConfig:
    """Architecture and self-prediction settings of `SPMambaPolicy` (defaults: the paper's main configuration)."""

    d_model: int = 64
    """d, width of x_t and y_t (the paper's model dimension)."""
    expand: int = 2
    """ε, the expansion coefficient: the SSM runs on d·ε channels; the MLP-VAE's z_t has d·ε features."""
    d_state: int = 16
    """N, SSM state size per channel."""
    d_conv: int = 4
    """Width of the Mamba block's own causal convolution."""
    k: int = 1
    """Observations the encoder's CNN aggregates (the paper uses 8 for long-horizon tasks, §5.1.2)."""
    encoder: EncoderKind = "mlp"
    """VAE kind: "mlp" (the paper's MLP-VAE), "categorical" (Dreamer) or "simnorm" (TD-MPC2)."""
    groups: int = 8
    """G, categoricals of the categorical / SimNorm encoders."""
    classes: int = 8
    """C, classes per categorical."""
    tau: float = 1.0
    """SimNorm temperature τ."""
    feature_norm: bool = True
    """LayerNorm on the raw observation before the encoder."""
    pred_from: PredFrom = "y"
    """What the transition decoder reads: "y" (eq. 4e), "h" (the SSM output, §5.4) or "raw" (y before its LayerNorm)."""
    alpha: float = 0.1
    """α, weight of L_pred in the actor loss."""
    mu: float = 0.01
    """μ, early-stop floor of L_pred and L_rep: below it the loss is the constant μ (no gradient)."""
    rep_loss: bool = False
    """Add the representation loss L_rep (eq. 12a)."""
    beta: float = 0.02
    """β, weight of L_rep."""
    rec_loss: bool = False
    """Add the reconstruction loss L_rec (eq. 12b) with a linear decoder REC(z_t) -> o_t."""
    sigma: float = 0.2
    """σ, weight of L_rec."""
    head_gain: float = 0.01
    """Orthogonal-init gain of the logits layer."""
    backend: Backend = "auto"
    """Mamba backend: "auto", "ref" or "cuda" (see `MambaConfig`)."""
    scan: ScanImpl = "auto"
    """How the pure-PyTorch path runs training sequences: "auto", "blocked", "loop" or "compiled" (see `MambaConfig`)."""
    latent_dim: int = field(init=False)
    """Z (derived): d·ε for "mlp", G·C otherwise."""

    def __post_init__(self) -> None:
        for name in ("d_model", "expand", "d_state", "d_conv", "k", "groups", "classes"):
            check_int(f"SPMambaConfig.{name}", getattr(self, name))
        check_choice("SPMambaConfig.encoder", self.encoder, ("mlp", "categorical", "simnorm"))
        check_choice("SPMambaConfig.pred_from", self.pred_from, ("y", "h", "raw"))
        check_choice("SPMambaConfig.scan", self.scan, get_args(ScanImpl))
        for name in ("mu", "alpha", "beta", "sigma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"SPMambaConfig.{name}: expected a number >= 0, got {value!r}")
        if not self.tau > 0:
            raise ValueError(f"SPMambaConfig.tau: expected a positive number, got {self.tau!r}")
        self.latent_dim = self.d_model * self.expand if self.encoder == "mlp" else self.groups * self.classes


class ObsEncoder(nn.Module):
    """ENC: o_t (..., D) -> z_t (..., Z) and the logits whose group-wise softmax the self-prediction targets (..., G, C)."""

    def __init__(self, obs_dim: int, cfg: SPMambaConfig) -> None:
        super().__init__()
        self.kind, self.tau, self.groups = cfg.encoder, cfg.tau, (1 if cfg.encoder == "mlp" else cfg.groups)
        self.norm = nn.LayerNorm(obs_dim) if cfg.feature_norm else nn.Identity()
        self.linear = nn.Linear(obs_dim, cfg.latent_dim)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (..., D) -> z (..., Z), target logits (..., G, C)."""
        logits = rearrange(self.linear(self.norm(obs)), "... (g c) -> ... g c", g=self.groups)
        if self.kind == "mlp":
            z = logits
        elif self.kind == "simnorm":
            logits = logits / self.tau
            z = softmax(logits)
        else:  # categorical: one-hot samples (the mode outside training), straight-through gradients
            probs = softmax(logits)
            if self.training:
                index = torch.multinomial(rearrange(probs, "... c -> (...) c").detach(), 1).reshape(probs.shape[:-1])
            else:
                index = probs.argmax(-1)
            z = F.one_hot(index, probs.shape[-1]).to(probs.dtype) + probs - probs.detach()
        return rearrange(z, "... g c -> ... (g c)"), logits


def grouped_kl(target_logits: Tensor, pred_logits: Tensor) -> Tensor:
    """KL[softmax(target) || softmax(pred)] summed over groups: (..., G, C) twice -> (...)."""
    log_p, log_q = log_softmax(target_logits), log_softmax(pred_logits)
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


class SPMambaPolicy(MambaStateMixin, RecurrentPolicy):
    """Shared decentralized SP-Mamba actor with its self-predictive auxiliary loss.

    Args:
        obs_dim: D.
        n_actions: A (discrete choices, or continuous action dims: the transition decoder then takes the vector).
        config: architecture and losses; defaults to `SPMambaConfig()`.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: SPMambaConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = self._setup(obs_dim, n_actions, config, SPMambaConfig)
        self.k, Z = cfg.k, cfg.latent_dim
        self.encoder = ObsEncoder(obs_dim, cfg)
        self.window = nn.Conv1d(Z, cfg.d_model, cfg.k)  # CNN over the last k encodings
        self.mamba = Mamba(
            d_model=cfg.d_model, d_state=cfg.d_state, expand=cfg.expand, d_conv=cfg.d_conv, backend=cfg.backend, scan=cfg.scan
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = init_linear_(nn.Linear(cfg.d_model, n_actions), cfg.head_gain)
        features = cfg.d_model * cfg.expand if cfg.pred_from == "h" else cfg.d_model
        self.decoder = nn.Linear(features + n_actions, Z)  # DEC(feature_t, u_t one-hot or vector) -> logits of ẑ_{t+1}
        self.reconstruct = nn.Linear(Z, obs_dim) if cfg.rec_loss else None

    def initial_state(self, batch: int) -> PolicyState:
        """``{"conv": (B, E, W), "ssm": (B, E, N)}`` (+ ``"z_hist": (B, k-1, Z)`` for k > 1), zeros."""
        state = self._block_state(batch)
        if self.k > 1:
            state["z_hist"] = state["ssm"].new_zeros(batch, self.k - 1, self.config.latent_dim)
        return state

    def _check_hist(self, state: PolicyState, batch: int) -> Tensor | None:
        if self.k == 1:
            return None
        expected = (batch, self.k - 1, self.config.latent_dim)
        hist = state.get("z_hist")
        if not isinstance(hist, Tensor) or tuple(hist.shape) != expected:
            got = tuple(hist.shape) if isinstance(hist, Tensor) else hist
            raise ValueError(f"state['z_hist']: expected the last k-1 encodings, shape {expected} (B, k-1, Z), got {got}")
        return hist

    def _window(self, taps: list[Tensor]) -> Tensor:
        """x = SiLU(CNN(window)): k taps (..., Z), oldest first -> (..., d)."""
        x = self.window.bias
        for j, tap in enumerate(taps):
            x = x + tap @ self.window.weight[:, :, j].T
        return F.silu(x)

    def step(self, obs: Tensor, state: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """obs: (B, D), state, resets: (B,) bool -> logits: (B, A), new state."""
        self.check_step(obs, resets)
        hist = self._check_hist(state, obs.shape[0])
        state = self._restart(state, resets)
        z, _ = self.encoder(obs)  # (B, Z)
        window = [z] if hist is None else [*state["z_hist"].unbind(1), z]
        # the unchecked step: obs was checked above and the state is ours; keeps the step traceable (ONNX)
        y, (conv, ssm) = self.mamba._step(self._window(window), (state["conv"], state["ssm"]))
        new = {"conv": conv, "ssm": ssm}
        if hist is not None:
            new["z_hist"] = torch.stack(window[1:], dim=1)
        return self.head(self.norm(y)), new

    def _sequence(self, obs: Tensor, resets: Tensor, state0: PolicyState) -> dict[str, Tensor]:
        """Everything a sequence produces: z, target logits, y_raw, y, the SSM output (for "h"), logits."""
        self.check_sequence(obs, resets)
        hist = self._check_hist(state0, obs.shape[0])
        resets = resets.bool()
        z, targets = self.encoder(obs)  # (B, T, Z), (B, T, G, C)
        if hist is None:
            x = self._window([z])
        else:
            x = self._window(window_taps(z, hist, resets)[0])
        y_raw, ssm_out, _ = self.mamba.forward_features(x, resets, (state0["conv"], state0["ssm"]))
        y = self.norm(y_raw)
        return {"z": z, "targets": targets, "y_raw": y_raw, "y": y, "h": ssm_out, "logits": self.head(y)}

    def forward_sequence(self, obs: Tensor, resets: Tensor, state0: PolicyState) -> Tensor:
        """obs: (B, T, D), resets: (B, T) bool, state0 -> logits: (B, T, A), by the block's parallel scan."""
        return self._sequence(obs, resets, state0)["logits"]

    def forward_train(
        self, obs: Tensor, resets: Tensor, state0: PolicyState, actions: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Logits and the self-predictive loss α L_pred (+ β L_rep + σ L_rec) of a chunk.

        L_pred at step t needs z_{t+1}: it counts where steps t and t+1 are valid and t+1 is not an
        episode start; the last step of a chunk has no target.
        """
        cfg = self.config
        out = self._sequence(obs, resets, state0)
        features = {"y": out["y"], "raw": out["y_raw"], "h": out["h"]}[cfg.pred_from][:, :-1]
        taken = actions[:, :-1]  # (B, T-1) choices, or (B, T-1, A) continuous action vectors
        u = taken if taken.is_floating_point() else F.one_hot(taken.long(), self.n_actions)
        u = u.to(features.dtype)
        pred = rearrange(self.decoder(torch.cat([features, u], -1)), "... (g c) -> ... g c", g=self.encoder.groups)
        target = out["targets"][:, 1:]
        has_next = valid[:, :-1] & valid[:, 1:] & ~resets[:, 1:].bool()  # (B, T-1)
        kl = masked_mean(grouped_kl(target.detach(), pred), has_next)
        loss = cfg.alpha * kl.clamp(min=cfg.mu)
        stats = {"pred_kl": float(kl.detach())}
        if cfg.rep_loss:
            rep = masked_mean(grouped_kl(target, pred.detach()), has_next)
            loss = loss + cfg.beta * rep.clamp(min=cfg.mu)
            stats["rep_kl"] = float(rep.detach())
        if self.reconstruct is not None:
            rec = masked_mean((self.reconstruct(out["z"]) - obs).square().mean(-1), valid)
            loss = loss + cfg.sigma * rec
            stats["rec_mse"] = float(rec.detach())
        return out["logits"], loss, stats
