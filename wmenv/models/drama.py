"""DRAMA's world model (Wang et al. 2025, ``papers/drama-mamba2-world-model.txt``) behind the `WorldModel` contract.

Glossary: B batch, T time, N agents (DRAMA is single-agent: N = 1), D = H·W·C observation features (a frame stored
flat in (h w c) order, as the ``atari:`` env view gives it), A actions, S categoricals, K classes, M ``d_model``.

What the authors' code runs (realwenlongwang/drama, checked; where the paper's text differs, the code is followed):

    z_t   ~ q(z_t | o_t)                    posterior from the frame alone: conv encoder -> Linear -> S×K logits
    x_t   = stem([z_{t-1}, onehot(a_{t-1})])  Linear -> RMSNorm -> SiLU, M wide
    h_t   = Mamba-2 stack(x_1 .. x_t)        pre-norm residual blocks, final RMSNorm (M wide)
    ẑ_t   ~ p(ẑ_t | h_t)                    prior, used in imagination
    r_t, terminated_t from h_t alone;  ô_t = decoder(z_t)

Encoder: convolutions of ``channels`` (kernel 5, "same" padding, the first with stride 1, the others stride 2), each
with BatchNorm and SiLU, flattened; the decoder mirrors it from z (Linear, BatchNorm, SiLU, transposed convolutions,
a sigmoid). Both categoricals mix 1 % of uniform into their probabilities (``unimix``). Loss (per window, as the
code): squared error summed over the frame's pixels in [0, 1] + symlog two-hot reward cross-entropy (255 bins) +
termination cross-entropy + 1.0 · max(1, KL[sg(q) || p]) + 0.1 · max(1, KL[q || sg(p)]), the KLs summed over the S
categoricals and averaged over rows before the free-bits floor. The `xs` preset has the code's 7,155,459 parameters
with 6 actions.

Where ours differs from the code, on purpose:
- Windows never cross episodes without a reset: at a row where an episode starts the Mamba-2 states entering it
  are zeroed and its input is the blank x (z and a zero), so h_t there is the learned start of an episode (the
  code's windows run across episode boundaries with the state carried on). The prior at such a row is trained too,
  which gives `initial` its meaning. A window that starts inside an episode has no input for its first row: that
  row counts only in the reconstruction loss.
- Indices follow this library's replay (reward and termination received on arriving at row t, action taken at
  row t): the code's h_t predicting r_t after a_t is our h_{t+1} predicting reward[t+1].
- Adam with the config's ``lr`` is what `wmenv.fit.fit` runs; the code uses LaProp (lr 4e-5, ε 1e-20) with a
  1,000-step linear warm-up and bf16 autocast.

Execution: `filter_step` is the same posterior, step by step (no messages: ``message_dim`` = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wmenv.checks import check_choice, check_int, check_positive, check_unit_interval
from wmenv.models.heads import categorical_kl, check_reward_head, check_rewards
from wmenv.models.rssm import onehot_from_uniform, uniform_like
from wmenv.models.ssm.kernels import Backend
from wmenv.models.ssm.mamba2_ref import Mamba2Config
from wmenv.models.ssm.stack import MambaDynamics, RMSNorm, SSMStates
from wmenv.models.twohot import symexp, symlog, symlog_bins, twohot_decode, twohot_loss
from wmenv.models.world_model import Prediction, State, WorldModel
from wmenv.tensor_ops import masked_mean, softmax

__all__ = ["PRESETS", "DRAMAConfig", "DRAMAWorldModel", "MambaDynamics", "drama_preset"]


@dataclass
class DRAMAConfig:
    """DRAMA's world model; `drama_preset` gives the paper's XS and S sizes and a small one for CPUs."""

    frame_shape: tuple[int, int, int] | None = None
    """(H, W, C) of one observation; None: the env's ``spec.extra["frame_shape"]`` (the ``atari:`` view sets it)."""
    pixel_scale: float = 255.0
    """Observations are divided by this before the encoder and the reconstruction loss (uint8 frames -> [0, 1])."""
    channels: tuple[int, ...] = (16, 32, 48, 64, 64)
    """Encoder filters per convolution (the decoder mirrors them); H and W must be multiples of 2^(len - 1)."""
    kernel: int = 5
    """Convolution kernel size (odd: "same" padding)."""
    stoch: int = 32
    """S, categorical variables of z."""
    classes: int = 32
    """K, classes per categorical."""
    unimix: float = 0.01
    """Share of the uniform distribution mixed into the posterior and prior probabilities."""
    d_model: int = 512
    """M, width of the sequence model (the stem's output, each block's, the final norm's)."""
    layers: int = 2
    """Pre-norm residual Mamba-2 blocks."""
    d_state: int = 16
    """Mamba-2 state size per head (N)."""
    expand: int = 2
    """Mamba-2 inner width factor."""
    headdim: int = 64
    """Mamba-2 channels per head (the code's default; the paper's table says 128)."""
    chunk_size: int = 256
    """Chunk length of the mamba-ssm SSD kernel on CUDA."""
    head_hidden: int = 256
    """Width of the reward and termination heads (one hidden layer with RMSNorm and SiLU)."""
    reward_bins: int = 255
    """Bins of the symlog two-hot reward head (odd, so that 0 is a bin)."""
    free_bits: float = 1.0
    """Floor of each KL term (nats, after averaging over rows)."""
    dyn_scale: float = 1.0
    """Weight of the dynamics KL, KL[sg(q) || p] (trains the prior)."""
    rep_scale: float = 0.1
    """Weight of the representation KL, KL[q || sg(p)] (regularizes the posterior)."""
    lr: float = 4e-5
    """Learning rate (the code's LaProp rate; `wmenv.fit.fit` runs Adam with it)."""
    grad_clip: float = 1000.0
    """Gradient-norm clipping (the code's)."""
    backend: Backend = "auto"
    """Mamba-2: "ref" pure PyTorch, "cuda" mamba-ssm kernels, "auto" kernels for CUDA tensors where installed."""
    norm_eps: float = field(default=1e-5, repr=False)
    """Epsilon of the RMSNorms."""

    def __post_init__(self) -> None:
        if self.frame_shape is not None:
            shape = tuple(self.frame_shape)
            if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
                got = self.frame_shape
                raise ValueError(f"DRAMAConfig.frame_shape: expected (H, W, C) positive integers or None, got {got!r}")
            self.frame_shape = shape  # a JSON round trip gives a list
        self.channels = tuple(self.channels)
        if not self.channels:
            raise ValueError("DRAMAConfig.channels: expected at least one convolution")
        for i, c in enumerate(self.channels):
            check_int(f"DRAMAConfig.channels[{i}]", c)
        for name in ("kernel", "stoch", "classes", "d_model", "layers", "d_state", "expand", "headdim", "chunk_size",
                     "head_hidden"):  # fmt: skip
            check_int(f"DRAMAConfig.{name}", getattr(self, name))
        if self.kernel % 2 == 0:
            raise ValueError(f"DRAMAConfig.kernel: expected an odd size (for 'same' padding), got {self.kernel}")
        if self.classes < 2:
            raise ValueError(f"DRAMAConfig.classes: expected at least 2 classes, got {self.classes}")
        check_reward_head("DRAMAConfig", "twohot", self.reward_bins)
        check_unit_interval("DRAMAConfig.unimix", self.unimix, open_high=True)
        for name in ("pixel_scale", "lr", "grad_clip", "norm_eps"):
            check_positive(f"DRAMAConfig.{name}", getattr(self, name))
        for name in ("free_bits", "dyn_scale", "rep_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"DRAMAConfig.{name}: expected a number >= 0, got {value!r}")
        check_choice("DRAMAConfig.backend", self.backend, ("auto", "ref", "cuda"))
        Mamba2Config(d_model=self.d_model, d_state=self.d_state, expand=self.expand, headdim=self.headdim)  # checks


PRESETS = ("xs", "s", "cpu-small")


def drama_preset(name: str) -> DRAMAConfig:
    """Named sizes: ``"xs"`` (the paper's default, 7.2 M parameters with 6 actions), ``"s"`` (twice the filters and
    the SSM state: the paper's S) and ``"cpu-small"`` (a quarter of XS's filters, M = 128, 16×16 latents)."""
    if name == "xs":
        return DRAMAConfig()
    if name == "s":
        return DRAMAConfig(channels=(32, 64, 96, 128, 128), d_state=32)
    if name == "cpu-small":
        return DRAMAConfig(channels=(8, 16, 24, 32, 32), stoch=16, classes=16, d_model=128, headdim=32, head_hidden=128,
                           lr=3e-4)  # fmt: skip
    raise ValueError(f"name: expected one of {list(PRESETS)}, got {name!r}")


def conv_encoder(in_channels: int, channels: tuple[int, ...], kernel: int) -> nn.Sequential:
    """Convolutions (the first stride 1, the others 2; "same" padding), each with BatchNorm and SiLU, flattened."""
    mods: list[nn.Module] = []
    for i, c in enumerate(channels):
        mods += [nn.Conv2d(in_channels, c, kernel, stride=1 if i == 0 else 2, padding=kernel // 2), nn.BatchNorm2d(c),
                 nn.SiLU()]  # fmt: skip
        in_channels = c
    return nn.Sequential(*mods, nn.Flatten())


def conv_decoder(
    latent: int, out_channels: int, channels: tuple[int, ...], kernel: int, grid: tuple[int, int]
) -> nn.Sequential:
    """The mirror of `conv_encoder` from a flat latent: Linear to (channels[-1], *grid), BatchNorm, SiLU, transposed
    convolutions (stride 2) back through ``channels``, a last one (stride 1) to ``out_channels`` and a sigmoid."""
    top, pad = channels[-1], kernel // 2
    mods: list[nn.Module] = [nn.Linear(latent, top * grid[0] * grid[1]), nn.Unflatten(-1, (top, *grid)),
                             nn.BatchNorm2d(top), nn.SiLU()]  # fmt: skip
    for c in reversed(channels[:-1]):
        mods += [nn.ConvTranspose2d(top, c, kernel, stride=2, padding=pad, output_padding=1), nn.BatchNorm2d(c), nn.SiLU()]
        top = c
    mods += [nn.ConvTranspose2d(top, out_channels, kernel, stride=1, padding=pad), nn.Sigmoid()]
    return nn.Sequential(*mods)


def rms_mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 1, eps: float = 1e-5) -> nn.Sequential:
    """DRAMA's MLPs (reward / termination heads: one layer; actor and critic: three): ``layers`` × (Linear, RMSNorm,
    SiLU) of width ``hidden``, then a Linear to ``out_dim``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), RMSNorm(hidden, eps), nn.SiLU()]
    return nn.Sequential(*mods, nn.Linear(hidden, out_dim))


def mix_uniform(logits: Tensor, share: float) -> Tensor:
    """Logits (..., K) of ``(1 - share) · softmax(logits) + share / K``."""
    if share == 0:
        return logits
    probs = softmax(logits)
    return torch.log((1 - share) * probs + share / logits.shape[-1])


class DRAMAWorldModel(WorldModel):
    """DRAMA's world model for a single-agent env ``spec`` with discrete actions and frame observations.

    The state is ``{"h": (B, 1, M), "z": (B, 1, S·K), "conv<i>": (B, 1, ...), "ssm<i>": (B, 1, ...)}``: the sequence
    model's output at this row, the latent sampled for it, and each Mamba-2 block's state after reading this row's
    input. Features are [h, z] (the code's actor input is [z, h]).

    Args:
        spec: the real env's `EnvSpec` (one agent, Discrete actions, D = H·W·C).
        config: sizes and loss weights; default the `xs` preset.

    Raises:
        ValueError: several agents, continuous actions, or frames that do not match ``frame_shape``.
    """

    def __init__(self, spec, config: DRAMAConfig | None = None) -> None:
        super().__init__()
        self.spec, self.config = spec, config if config is not None else DRAMAConfig()
        c = self.config
        if spec.n_agents != 1:
            raise ValueError(f"spec: DRAMA is a single-agent model, got {spec.n_agents} agents in {spec.id} "
                             "(the multi-agent models are 'mamba' and 'mabl')")  # fmt: skip
        if not spec.discrete:
            raise ValueError(f"spec: DRAMA's model takes discrete actions, {spec.id} has continuous ones")
        shape = c.frame_shape if c.frame_shape is not None else spec.extra.get("frame_shape")
        if shape is None:
            raise ValueError(f"DRAMAConfig.frame_shape: {spec.id} records no frame shape (spec.extra['frame_shape']); "
                             "set (H, W, C)")  # fmt: skip
        self.frame_shape = height, width, chans = tuple(int(v) for v in shape)
        if height * width * chans != spec.obs_dim:
            raise ValueError(f"frame_shape: {self.frame_shape} holds {height * width * chans} values, but {spec.id}'s "
                             f"observations have {spec.obs_dim}")  # fmt: skip
        down = 2 ** (len(c.channels) - 1)
        if height % down or width % down:
            raise ValueError(f"frame_shape: H and W must be multiples of {down} for {len(c.channels)} convolutions, "
                             f"got {self.frame_shape}")  # fmt: skip
        grid = (height // down, width // down)
        latent, A = c.stoch * c.classes, spec.n_actions
        self.encoder = conv_encoder(chans, c.channels, c.kernel)
        self.post_head = nn.Linear(c.channels[-1] * grid[0] * grid[1], latent)
        self.prior_head = nn.Linear(c.d_model, latent)
        mamba = Mamba2Config(d_model=c.d_model, d_state=c.d_state, expand=c.expand, headdim=c.headdim,
                             chunk_size=c.chunk_size, backend=c.backend)  # fmt: skip
        self.dynamics = MambaDynamics(latent + A, c.layers, mamba, c.norm_eps)
        self.decoder = conv_decoder(latent, chans, c.channels, c.kernel, grid)
        self.reward_head = rms_mlp(c.d_model, c.head_hidden, c.reward_bins, eps=c.norm_eps)
        self.term_head = rms_mlp(c.d_model, c.head_hidden, 1, eps=c.norm_eps)
        self.register_buffer("reward_bins", symlog_bins(c.reward_bins), persistent=False)  # (K,) not in checkpoints

    # --- pieces ---
    def _frames(self, obs: Tensor) -> Tensor:
        """(..., D) flat (h w c) observations -> (n, C, H, W) scaled frames (n = the leading dims' product)."""
        h, w, _ = self.frame_shape
        return rearrange(obs.reshape(-1, obs.shape[-1]) / self.config.pixel_scale, "n (h w c) -> n c h w", h=h, w=w)

    def _logits(self, net: nn.Module, x: Tensor) -> Tensor:
        return mix_uniform(rearrange(net(x), "... (s k) -> ... s k", k=self.config.classes), self.config.unimix)

    def _posterior_logits(self, obs: Tensor) -> Tensor:
        """(..., D) observations -> (..., S, K) posterior logits."""
        logits = self._logits(self.post_head, self.encoder(self._frames(obs)))
        return logits.reshape(*obs.shape[:-1], *logits.shape[1:])

    def _decode_scaled(self, z: Tensor) -> Tensor:
        """(..., S·K) latents -> (..., D) frames as the encoder reads them (divided by ``pixel_scale``; flat (h w c))."""
        flat = rearrange(self.decoder(z.reshape(-1, z.shape[-1])), "n c h w -> n (h w c)")  # in [0, 1]
        return flat.reshape(*z.shape[:-1], flat.shape[-1])

    def _decode(self, z: Tensor) -> Tensor:
        """(..., S·K) latents -> (..., D) frames in env units (flat (h w c))."""
        return self._decode_scaled(z) * self.config.pixel_scale

    def _inputs(self, z: Tensor, action: Tensor) -> Tensor:
        """[z, onehot(a)] (..., S·K + A) for actions (...) int64 (-1: none, a zero vector)."""
        onehot = F.one_hot(action.long().clamp(min=0), self.spec.n_actions).to(z.dtype) * (action >= 0).unsqueeze(-1)
        return torch.cat([z, onehot], dim=-1)

    def _blank_inputs(self, batch: int) -> Tensor:
        """(B, S·K + A) zeros: the input of an episode's first row."""
        c, w = self.config, self.prior_head.weight
        return w.new_zeros(batch, c.stoch * c.classes + self.spec.n_actions)

    @staticmethod
    def _named(states: SSMStates) -> dict[str, Tensor]:
        """The block states as ``{"conv<i>": ..., "ssm<i>": ...}``."""
        return {f"{kind}{i}": t for i, pair in enumerate(states) for kind, t in zip(("conv", "ssm"), pair)}

    def _pack(self, h: Tensor, z: Tensor, states: SSMStates) -> State:
        """A state (B, 1, ...) from per-row h (B, M), z (B, S·K) and block states (B, ...)."""
        return {k: v[:, None] for k, v in {"h": h, "z": z, **self._named(states)}.items()}

    def _unpack(self, state: State) -> tuple[Tensor, SSMStates]:
        """z (B, S·K) and the block states (B, ...) of a state."""
        if not isinstance(state, dict) or "z" not in state or f"ssm{self.config.layers - 1}" not in state:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a DRAMA state with keys h, z, conv<i>, ssm<i>, got {got}")
        states = [(state[f"conv{i}"][:, 0], state[f"ssm{i}"][:, 0]) for i in range(self.config.layers)]
        return state["z"][:, 0], states

    def _prior_step(self, x: Tensor, states: SSMStates, generator: torch.Generator | None) -> State:
        """Read input x (B, S·K + A), sample the prior of the new row."""
        h, states = self.dynamics.step(x, states)
        logits = self._logits(self.prior_head, h)
        return self._pack(h, onehot_from_uniform(logits, uniform_like(logits, generator)), states)

    def _check_actions(self, actions: Tensor, shape: tuple[int, ...]) -> Tensor:
        if not isinstance(actions, Tensor) or tuple(actions.shape) != shape or actions.is_floating_point():
            got = f"{tuple(actions.shape)} {actions.dtype}" if isinstance(actions, Tensor) else type(actions).__name__
            raise ValueError(f"actions: expected an integer tensor of shape {shape}, got {got}")
        if bool(((actions < -1) | (actions >= self.spec.n_actions)).any()):
            raise ValueError(f"actions: expected values in [-1, {self.spec.n_actions}), got {actions.unique().tolist()}")
        return actions.long()

    # --- the contract ---
    def features(self, state: State) -> Tensor:
        """(B, 1, M + S·K) = [h, z]."""
        return torch.cat([state["h"], state["z"]], dim=-1)

    def critic_features(self, state: State) -> Tensor:
        """(B, M + S·K): the one agent's features."""
        return rearrange(self.features(state), "b n f -> b (n f)")

    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """An episode's first row: the blank input read from zero states, and a sample of its prior."""
        check_int("batch_size", batch_size)
        return self._prior_step(self._blank_inputs(batch_size), self.dynamics.initial_states(batch_size), generator)

    def predict(self, state: State, decode: bool = False) -> Prediction:
        """Reward and continuation (1 − P(terminated)) from h; with ``decode`` the frame decoded from z."""
        h = state["h"]
        return Prediction(
            reward=symexp(twohot_decode(self.reward_head(h), self.reward_bins)),
            cont=torch.sigmoid(-self.term_head(h).squeeze(-1)),
            obs=self._decode(state["z"]) if decode else None,
        )

    def imagine(
        self,
        state: State,
        actions: Tensor,
        generator: torch.Generator | None = None,
        decode: bool = False,
        present: Tensor | None = None,
    ) -> tuple[State, Prediction]:
        """One imagined step for actions (B, 1) int64: read [z, a], sample the prior of the next row."""
        z, states = self._unpack(state)
        actions = self._check_actions(torch.as_tensor(actions, device=z.device), (z.shape[0], 1))
        nxt = self._prior_step(self._inputs(z, actions[:, 0]), states, generator)
        return nxt, self.predict(nxt, decode)

    def observe(
        self,
        obs: Tensor,
        actions: Tensor,
        resets: Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        *,
        global_state: Tensor | None = None,
    ) -> State:
        """The posterior after the last row of real windows (obs (B, T, 1, D), actions (B, T, 1) taken at each row,
        resets (B, T)); ``state`` continues an earlier one (row 0 then reads its z with no action), else row 0 starts
        from zero states with the blank input. ``alive`` and ``global_state`` are not read (one agent; no state)."""
        self._check_windows(obs, actions, resets)
        _, z, h, states = self._filter(obs, actions, resets.bool(), state, generator)
        return self._pack(h[:, -1], z[:, -1], states)

    def observe_rows(
        self,
        obs: Tensor,
        actions: Tensor,
        resets: Tensor,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        *,
        global_state: Tensor | None = None,
    ) -> State:
        """Every row's h and z, name -> (B, T, 1, ...) (`WorldModel.observe_rows`)."""
        self._check_windows(obs, actions, resets)
        _, z, h, _ = self._filter(obs, actions, resets.bool(), None, generator)
        return {"h": h[:, :, None], "z": z[:, :, None]}

    def _filter(
        self, obs: Tensor, actions: Tensor, resets: Tensor, state: State | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, SSMStates]:
        """Checked windows -> posterior logits (B, T, S, K), their samples z (B, T, S·K), h (B, T, M) and the block
        states after the last row. Row 0 reads ``state``'s z with no action, or, without a state, the blank input."""
        post = self._posterior_logits(obs[:, :, 0])
        z = onehot_from_uniform(post, uniform_like(post, generator))
        if state is None:
            z0, states = torch.zeros_like(z[:, 0]), None
            first = torch.ones_like(resets[:, :1])
        else:
            z0, states = self._unpack(state)
            first = resets[:, :1]
        x = self._window_inputs(z, actions[:, :, 0].long(), z0, resets | F.pad(first, (0, resets.shape[1] - 1)))
        h, states = self.dynamics(x, resets, states)
        return post, z, h, states

    def _window_inputs(self, z: Tensor, actions: Tensor, z0: Tensor, blank: Tensor) -> Tensor:
        """(B, T, S·K + A): [z_{t-1}, onehot(a_{t-1})] per row (row 0: [z0, none]), zero where ``blank`` (B, T)."""
        prev_z = torch.cat([z0[:, None], z[:, :-1]], dim=1)
        prev_a = F.pad(actions[:, :-1], (1, 0), value=-1)
        return self._inputs(prev_z, prev_a) * (~blank).unsqueeze(-1).to(z.dtype)

    def _check_windows(self, obs: Tensor, actions: Tensor, resets: Tensor) -> None:
        if not isinstance(obs, Tensor) or obs.dim() != 4 or obs.shape[2:] != (1, self.spec.obs_dim):
            got = tuple(obs.shape) if isinstance(obs, Tensor) else type(obs).__name__
            raise ValueError(f"obs: expected (B, T, 1, {self.spec.obs_dim}) frames, got {got}")
        if not obs.is_floating_point():
            raise TypeError(f"obs: expected float frames (replay batches are float32), got dtype {obs.dtype}")
        batch, length = obs.shape[:2]
        self._check_actions(actions, (batch, length, 1))
        if not isinstance(resets, Tensor) or tuple(resets.shape) != (batch, length):
            got = tuple(resets.shape) if isinstance(resets, Tensor) else type(resets).__name__
            raise ValueError(f"resets: expected shape ({batch}, {length}), got {got}")

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """World-model loss of replay windows (see the module docstring); returns the total and each term.

        Rows counted: reconstruction on rows where the agent is alive; reward, termination and both KLs on rows with
        an input (every row but a window's first, and a window's first where an episode starts there)."""
        c = self.config
        obs, actions, resets = batch["obs"], batch["action"], batch["reset"].bool()
        self._check_windows(obs, actions, resets)
        check_rewards(batch)
        alive = batch["alive"].bool()[:, :, 0]
        post, z, h, _ = self._filter(obs, actions, resets, None, None)  # (B, T, S, K), (B, T, S·K), (B, T, M)
        prior = self._logits(self.prior_head, h)
        rows = resets.clone()
        rows[:, 1:] = True  # (B, T) rows with an input
        recon = (self._decode_scaled(z) - obs[:, :, 0] / c.pixel_scale).square().sum(-1)
        reward = twohot_loss(self.reward_head(h), symlog(batch["reward"][:, :, 0]), self.reward_bins)
        term = F.binary_cross_entropy_with_logits(
            self.term_head(h).squeeze(-1), batch["terminated"][:, :, 0].to(h.dtype), reduction="none"
        )
        dyn = masked_mean(categorical_kl(post.detach(), prior), rows)
        rep = masked_mean(categorical_kl(post, prior.detach()), rows)
        terms = {
            "obs": masked_mean(recon, alive),
            "reward": masked_mean(reward, rows),
            "cont": masked_mean(term, rows),
            "kl": dyn,
            "kl_rep": rep,
        }
        floor = torch.as_tensor(c.free_bits, dtype=h.dtype, device=h.device)
        total = terms["obs"] + terms["reward"] + terms["cont"]
        total = total + c.dyn_scale * torch.maximum(dyn, floor) + c.rep_scale * torch.maximum(rep, floor)
        return total, {k: float(v.detach()) for k, v in terms.items()}

    # --- execution: the agent's own filter ---
    def filter_initial(self, batch_size: int) -> State:
        """B blank filter states: z (B, S·K) and each block's conv / ssm state (B, ...), all zeros."""
        c = self.config
        z = self.prior_head.weight.new_zeros(batch_size, c.stoch * c.classes)
        return {"z": z, **self._named(self.dynamics.initial_states(batch_size))}

    def message(self, state: State, action: Tensor, agent: Tensor | None = None) -> Tensor:
        """(B, 0): one agent, no messages."""
        return state["z"].new_zeros(state["z"].shape[0], 0)

    def filter_step(
        self,
        state: State,
        obs: Tensor,
        prev_action: Tensor,
        reset: Tensor,
        agent: Tensor,
        messages: Tensor | None = None,
        heard: Tensor | None = None,
        alive: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, Tensor]:
        """One posterior step per row (`WorldModel.filter_step`; no messages): read [z_{t-1}, a_{t-1}] (the blank
        input and zero states on ``reset``), sample z_t from the frame; features (B, M + S·K) = [h_t, z_t]."""
        c = self.config
        shapes = self.dynamics.state_shapes()
        widths = {"z": c.stoch * c.classes, **self._named([tuple(math.prod(s) for s in pair) for pair in shapes])}
        flat = {k: v.reshape(v.shape[0], -1) for k, v in state.items()} if isinstance(state, dict) else state
        reset, agent, prev_action = self._check_filter_inputs(flat, widths, obs, prev_action, reset, agent)
        if not obs.is_floating_point():
            raise TypeError(f"obs: expected float frames, got dtype {obs.dtype}")
        keep = (~reset).to(obs.dtype)
        z = state["z"] * keep[:, None]
        states = [(state[f"conv{i}"] * keep.view(-1, 1, 1), state[f"ssm{i}"] * keep.view(-1, 1, 1, 1))
                  for i in range(self.config.layers)]  # fmt: skip
        x = self._inputs(z, torch.where(reset, -1, prev_action)) * keep[:, None]
        h, states = self.dynamics.step(x, states)
        post = self._posterior_logits(obs)  # (B, S, K)
        z = onehot_from_uniform(post, uniform_like(post, generator))
        return {"z": z, **self._named(states)}, torch.cat([h, z], dim=-1)
