"""Fitting a world model on the episode replay, and its checkpoints.

`fit` samples (B, T, N, ...) windows from an `EpisodeReplay`, minimizes ``model.loss`` with Adam and
gradient-norm clipping, shows a progress bar and logs every loss term to TensorBoard. Inside a
`torch.distributed` process group (e.g. under ``torchrun --nproc-per-node K``, gloo on CPU, NCCL on GPU) it is
data-parallel: each rank draws its own B windows (seed + rank), `DistributedDataParallel` averages the K ranks'
gradients, and rank 0 alone writes events and checkpoints; every rank holds the same weights after each step; a rank
ends with `end_rank` (gloo's threads can abort a process that returns normally).
`model_average` keeps an exponential moving average of the weights `fit` steps (``average=``), for imagining in a
model that moves less from one fit to the next than the fitted one.
`save_model` / `load_model` write and read ``model.safetensors`` + ``config.json`` atomically; a
checkpoint of another format, env or configuration is refused with a ValueError.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from wmenv.checks import check_bool, check_choice, check_int, check_unit_interval
from wmenv.data.persist import temporary_name
from wmenv.models.registry import KINDS, config_from_dict, kind_of
from wmenv.models.world_model import WorldModel
from wmenv.optim import adam
from wmenv.tensor_ops import compiled

MODEL_FORMAT = 1


@dataclass
class FitConfig:
    """How to fit a world model on replay windows."""

    steps: int = 1000
    """Gradient steps."""
    batch_size: int = 16
    """B, windows per step."""
    seq_len: int = 20
    """T, rows per window (the MAMBA paper: 20 SMAC, 50 Flatland); at most the longest stored episode's rows, unless
    ``cross_episodes``."""
    cross_episodes: bool = False
    """Let windows run from one stored episode into the next, the model's state reset where the next one starts (every
    model handles a reset at any row), so ``seq_len`` does not have to fit inside an episode. MAMBA's and MABL's code
    sample their windows this way (anywhere in a ring buffer, the state zeroed after an episode's last row); False
    keeps every window inside one episode."""
    lr: float | None = None
    """Adam learning rate; None takes the model config's ``lr``."""
    grad_clip: float | None = None
    """Gradient-norm clip; None takes the model config's ``grad_clip``."""
    seed: int = 0
    """Seed of the window sampling and the latent samples."""
    log_every: int = 25
    """Write TensorBoard scalars every this many steps (when a writer or ``run_dir`` is given)."""
    checkpoint_every: int = 0
    """Save a checkpoint to ``run_dir/model`` every this many steps (0: only at the end, if ``run_dir``)."""
    run_dir: str | None = None
    """TensorBoard events and the model checkpoint go here; nothing is written when None."""
    progress: bool = True
    """Show a tqdm progress bar."""
    compile: Literal["off", "steps", "loss"] = "off"
    """`torch.compile` in the fit step (eager's random streams; the plain path where compiling fails, after one warning).
    ``"steps"``: the model's per-row filtering function and its heads' losses (`WorldModel.compile_steps`; models with
    ``steps_compilable``), compiled once per shape in about half a minute on a 2-core CPU. ``"loss"``: the whole loss
    (any model; the small model's fit step 24 % faster, but about 5 minutes to compile there). ``"off"``: eager.
    Booleans are read as ``"loss"`` (True) / ``"off"`` (False), the meaning they had before."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "log_every"):
            check_int(f"FitConfig.{name}", getattr(self, name))
        check_bool("FitConfig.cross_episodes", self.cross_episodes)
        check_int("FitConfig.checkpoint_every", self.checkpoint_every, 0)
        if isinstance(self.compile, bool):
            self.compile = "loss" if self.compile else "off"
        check_choice("FitConfig.compile", self.compile, ("off", "steps", "loss"))


def fit_window_rows(config: FitConfig, replay: Any) -> int:
    """T of the windows to fit on ``replay``: ``config.seq_len``, or, with windows kept inside episodes, at most the
    shortest whole episode's rows, so that every stored episode can start one (streamed pieces of episodes do not
    count: a piece can be one row long)."""
    if config.cross_episodes:
        return config.seq_len
    whole = getattr(replay, "whole_episodes", None)
    lengths = replay.episode_lengths if whole is None else replay.episode_lengths[whole]
    return min(config.seq_len, int(lengths.min())) if len(lengths) else config.seq_len


def fit_learning_rate(config: FitConfig, model: WorldModel) -> float:
    """The Adam learning rate a fit of ``model`` under ``config`` uses: ``config.lr``, else the model config's ``lr``,
    else 1e-3. Callers that keep their own optimizer across fits (the model-based loop) build it with this."""
    if config.lr is not None:
        return config.lr
    return getattr(getattr(model, "config", None), "lr", 1e-3)


def ema_decay(decay: float, updates: int) -> float:
    """The weight the moving average keeps at its ``updates``-th update (counting from 0): ``decay``, warmed up as
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does, min(decay, (1 + n) / (10 + n)), so that an average
    started at a fresh model follows the first, fast-moving steps instead of staying near the initial weights."""
    return min(decay, (1 + updates) / (10 + updates))


def model_average(model: WorldModel, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights (torch's `AveragedModel`; its ``module`` is a world model
    of the same kind and config, starting at ``model``'s weights), updated by ``average.update_parameters(model)``,
    which `fit` calls after every step it is given the average for: W ← w·W + (1 − w)·W_model with w =
    `ema_decay(decay, n)` at the n-th update (n = ``average.n_averaged``). Raises ValueError for a decay outside (0, 1).
    """
    check_unit_interval("decay", decay, open_low=True, open_high=True)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor | int) -> None:
        torch._foreach_lerp_(averaged, current, 1 - ema_decay(decay, int(n)))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def fit(
    model: WorldModel, replay: Any, config: FitConfig | None = None, optimizer: torch.optim.Optimizer | None = None,
    average: AveragedModel | None = None,
) -> dict[str, list[float]]:  # fmt: skip
    """Fit ``model`` on windows of ``replay``; returns the history of every loss term (one value per step). With
    ``average`` (`model_average` of ``model``), the average is updated after every optimizer step.

    Raises:
        ValueError: the replay was recorded for another env than ``model.spec``, or holds no window of ``seq_len`` rows.
    """
    cfg = config if config is not None else FitConfig()
    if replay.spec_description is not None and replay.spec_description != model.spec.describe():
        raise ValueError(f"replay: recorded for env {replay.spec_description}, the model is for {model.spec.describe()}")
    model_cfg = getattr(model, "config", None)
    clip = cfg.grad_clip if cfg.grad_clip is not None else getattr(model_cfg, "grad_clip", 10.0)
    optimizer = _optimizer(cfg, model, optimizer)
    device = next(model.parameters()).device
    rank, world = _rank_and_world()
    sampler = torch.Generator().manual_seed(cfg.seed + rank)  # each rank draws its own windows
    torch.manual_seed(cfg.seed + rank)  # the latent samples of the RSSM
    writes = cfg.run_dir is not None and rank == 0  # one writer of events and checkpoints
    writer = SummaryWriter(cfg.run_dir) if writes else None
    history: dict[str, list[float]] = {}
    if cfg.compile == "steps" and not getattr(model, "steps_compilable", False):
        raise ValueError(
            f"FitConfig.compile: 'steps' needs a model whose loss compiles per row (steps_compilable), "
            f"{type(model).__name__} has none; use 'loss' or 'off'"
        )
    model.compile_steps = cfg.compile == "steps"
    model.train()
    loss_fn = compiled(model.loss) if cfg.compile == "loss" else model.loss
    if world > 1:  # DDP averages the ranks' gradients during backward (and broadcast rank 0's weights here)
        loss_fn = DistributedDataParallel(_Loss(model, loss_fn))
    try:
        bar = tqdm(range(cfg.steps), desc="fit world model", unit="step", disable=not cfg.progress)
        for step in bar:
            batch = replay.sample(
                cfg.batch_size, cfg.seq_len, cross_episodes=cfg.cross_episodes, generator=sampler, device=device
            )
            loss, stats = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            stats["loss"] = float(loss.detach())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"world-model loss is {stats['loss']} at fit step {step}: {stats}")
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            for k, v in stats.items():
                history.setdefault(k, []).append(v)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
            if writer is not None and step % cfg.log_every == 0:
                for k, v in stats.items():
                    writer.add_scalar(f"world_model/{k}", v, step)
            if writes and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                save_model(Path(cfg.run_dir) / "model", model)
    finally:
        if world > 1:  # DDP sits in a reference cycle; left to the cyclic collector it can outlive the process group
            del loss_fn  # and abort the process at exit (gloo, torch 2.13: 6 in 30 runs of two ranks that trained a
            gc.collect()  # DDP-wrapped layer, 0 in 30 with a collection before destroying the group)
    if writer is not None:
        writer.close()
    if writes:
        save_model(Path(cfg.run_dir) / "model", model)
    return history


def _optimizer(cfg: FitConfig, model: WorldModel, optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
    """The optimizer `fit` steps: the one passed (checked against ``cfg.lr``), or a fresh Adam."""
    if optimizer is None:
        return adam(model.parameters(), lr=fit_learning_rate(cfg, model))
    if cfg.lr is not None and any(group["lr"] != cfg.lr for group in optimizer.param_groups):
        raise ValueError(
            f"FitConfig.lr: {cfg.lr}, but the optimizer passed to fit has lr "
            f"{sorted({group['lr'] for group in optimizer.param_groups})}; build it with lr=fit_learning_rate(config, model) "
            "or leave FitConfig.lr None"
        )
    return optimizer


class _Loss(torch.nn.Module):
    """``model``'s loss as a module's forward, which is what `DistributedDataParallel` wraps."""

    def __init__(self, model: WorldModel, loss_fn: Any) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(batch)


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the `torch.distributed` process group `fit` runs in, (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def end_rank(code: int = 0) -> NoReturn:
    """End a data-parallel rank's process now: destroy the default process group if one is left, flush stdout and
    stderr, and exit with ``code`` without the interpreter's teardown (atexit handlers do not run).

    Call it last in a rank function (after its results are written), e.g. under `torch.multiprocessing.spawn`. Why:
    gloo's worker threads may hold the last C++ reference to a tensor that Python also holds (an all-reduced buffer,
    a gradient); dropping it takes the GIL, and a thread that asks for the GIL while the interpreter finalizes calls
    std::terminate, aborting a rank whose work is done. Measured with torch 2.13: 1 run in 10 to 1 in 5 of two gloo
    ranks that fit and all-reduce then return normally died of SIGABRT ("terminate called without an active
    exception"; core dumps show the thread in ``~AsyncAllreduceWork``); process groups outlive
    `destroy_process_group` while anything still references them, so destroying the group does not join its threads.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code: expected an int exit status, got {type(code).__name__} {code!r}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def save_model(path: str | Path, model: WorldModel) -> Path:
    """Write ``path/{model.safetensors, config.json}`` atomically (a crash leaves an older checkpoint intact, and a
    temporary folder that `wmenv.data.persist.remove_temporaries` clears)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(*temporary_name(path.name), dir=path.parent))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    meta = {
        "format": MODEL_FORMAT,
        "kind": kind_of(model),
        "model": type(model).__name__,
        "config": dataclasses.asdict(model.config),
        "spec": model.spec.describe(),
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    if path.exists():
        old = Path(tempfile.mkdtemp(*temporary_name(f"{path.name}.old"), dir=path.parent))
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def load_model(path: str | Path, spec: Any, kind: str | None = None) -> WorldModel:
    """Rebuild a world model saved by `save_model` for the env ``spec``, as the registered kind it was saved as.

    Args:
        path: the checkpoint folder.
        spec: the env's `EnvSpec` (must be the one the model was fitted on).
        kind: the kind the caller expects (`wmenv.models.registry`); None accepts any.

    Raises:
        ValueError: another format, kind or env, weights that do not fit the saved configuration, or unreadable files.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"path: {path} holds no readable world-model config.json: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"path: {path}/config.json holds {type(meta).__name__}, expected a world-model config object")
    by_class = {k.model_cls.__name__: k.name for k in KINDS.values()}  # checkpoints from before kinds were recorded
    model_name = meta.get("model")
    saved_kind = meta.get("kind", by_class.get(model_name) if isinstance(model_name, str) else None)
    if meta.get("format") != MODEL_FORMAT or not isinstance(saved_kind, str) or saved_kind not in KINDS:
        raise ValueError(f"path: expected a world-model checkpoint of format {MODEL_FORMAT} of a registered kind "
                         f"({sorted(KINDS)}), got kind {saved_kind!r} ({meta.get('model')!r}) of format "
                         f"{meta.get('format')!r}")  # fmt: skip
    if kind is not None and kind != saved_kind:
        raise ValueError(f"kind: {path} holds a {saved_kind!r} world model, expected {kind!r}")
    if meta.get("spec") != spec.describe():
        raise ValueError(f"spec: the model in {path} was fitted on env {meta.get('spec')}, got {spec.describe()}")
    k = KINDS[saved_kind]
    try:
        model = k.model_cls(spec, config_from_dict(k.config_cls, meta.get("config")))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"path: {path}/config.json holds a corrupt {saved_kind!r} model config: {e!r}") from e
    try:
        weights = load_file(str(path / "model.safetensors"))
        model.load_state_dict(weights)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"path: the weights in {path} cannot be loaded into the saved configuration: {e}") from e
    return model
