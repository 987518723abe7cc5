"""PPO on the real episodes an iteration just collected, beside the dream's updates.

Glossary: K episodes, R rows (the longest episode's, T = R - 1 steps), N agents, D actor inputs, C critic features,
A actions.

MAMBA's actor learns in the dream only. Where the dream misjudges a rare event the actor never meets the real
outcome: on Flatland-5 the actor stopped departing while its own dream rated driving on higher (BENCHMARKS.md, "A
longer horizon, a larger entropy weight"). MAPPO's model-free update needs nothing more than the episodes the loop
already collects, so `real_rollout` turns them into a `RolloutStorage` that `MAPPO.update` takes as it takes a dream
rollout: real rewards, real terminations, real action masks.

Each episode is one env column of the storage, from its reset to its end (padding after a shorter episode's end is
invalid in every loss term). The actor's inputs are what it acts on in reality: the observations for decoded actors,
or, for latent ones, the world model's filtered features of the episode (`WorldModel.observe_rows`, every row's
posterior, as the replay value loss reads them); the critic's inputs are the model's centralized features of the same
posteriors. Log-probabilities and values are the current actor's and critic's, run step by step from the episode's
start with their recurrent states, so the update is on-policy where the current actor collected the episode: call it
right after collecting, before the actor changes. Two approximations remain, both bounded by PPO's clipping: the latent
features are a fresh posterior sample, not the one the filters drew while acting, and an episode that began in the
previous iteration was partly collected by the actor before its last update.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

from agents.mappo import MAPPO
from agents.storage import RolloutStorage
from wmenv.checks import check_choice
from wmenv.models.world_model import WorldModel, flat_rows


def pad_episodes(episodes: Sequence[dict[str, np.ndarray]]) -> dict[str, Tensor]:
    """K episodes (the episode format, `wmenv.data.episode`) as (K, R, ...) tensors, R the longest episode's rows.

    Rows after a shorter episode's end are zeros (``alive`` False); ``reset`` (K, R) is True on row 0.
    """
    if not episodes:
        raise ValueError("episodes: expected at least one episode, got none")
    whole = [bool(ep["is_first"][0]) and bool(ep["is_last"][-1]) for ep in episodes]
    if not all(whole):
        raise ValueError(f"episodes: expected whole episodes (is_first on row 0, is_last on the last row); entries "
                         f"{[i for i, w in enumerate(whole) if not w]} are pieces")  # fmt: skip
    rows = max(len(ep["obs"]) for ep in episodes)
    out = {}
    for k in episodes[0]:
        first = episodes[0][k]
        padded = np.zeros((len(episodes), rows, *first.shape[1:]), dtype=first.dtype)
        for i, ep in enumerate(episodes):
            padded[i, : len(ep[k])] = ep[k]
        out[k] = torch.from_numpy(padded)
    out["reset"] = torch.zeros(len(episodes), rows, dtype=torch.bool)
    out["reset"][:, 0] = True
    return out


@torch.no_grad()
def real_rollout(
    agent: MAPPO,
    model: WorldModel,
    episodes: Sequence[dict[str, np.ndarray]],
    actor_input: str,
    seed: int,
) -> RolloutStorage:
    """K whole real episodes as a filled `RolloutStorage` of T = R - 1 steps and K env columns.

    Args:
        agent: the learner; its actor gives the log-probabilities, its critic the values (both from fresh recurrent
            states at each episode's reset).
        model: the world model whose `critic_features` the critic reads (and, for latent actors, whose `features` the
            actor reads).
        episodes: whole episodes (`wmenv.data.episode` format; `EpisodeReplay.episode`).
        actor_input: ``"latent"`` (the model's filtered features) or ``"decoded"`` (the observations).
        seed: seeds the posterior samples.

    Step t of column k is row t of episode k: the agents that act there (alive, not ended) are valid; the step's
    reward and terminations are those received on arriving at row t + 1; an agent truncated there (or left alive at
    the episode's last row) is bootstrapped with the critic's value of row t + 1, one that terminated is not.
    """
    check_choice("actor_input", actor_input, ("latent", "decoded"))
    device, n = agent.device, agent.n_agents
    w = {k: v.to(device) for k, v in pad_episodes(episodes).items()}
    K, R = w["reset"].shape
    if R < 2:
        raise ValueError(f"episodes: expected at least one step (2 rows), the longest has {R} row")
    alive, terminated, truncated = w["alive"].bool(), w["terminated"].bool(), w["truncated"].bool()
    was_training = model.training
    model.eval()
    obs = w["obs"].float()  # uint8 frames too
    try:
        rows = model.observe_rows(
            obs, w["action"], w["reset"], generator=torch.Generator(device).manual_seed(seed), alive=alive,
            global_state=w.get("state"),
        )  # fmt: skip
        flat = flat_rows(rows)
        critic_in = rearrange(model.critic_features(flat), "(k r) c -> k r c", k=K)
        actor_in = rearrange(model.features(flat), "(k r) n f -> k r n f", k=K) if actor_input == "latent" else obs
    finally:
        model.train(was_training)
    if actor_in.shape[-1] != agent.obs_dim or critic_in.shape[-1] != agent.state_dim:
        raise ValueError(f"model: gives actor inputs of width {actor_in.shape[-1]} and critic inputs of width "
                         f"{critic_in.shape[-1]}, the agent expects {agent.obs_dim} and {agent.state_dim}")  # fmt: skip
    ended = terminated | truncated  # (K, R, N), on arriving at the row
    live = alive & ~ended  # acts at the row
    last = repeat(w["is_last"].bool(), "k r -> k r n", n=n)
    # rows where an agent does not act hold action 0 and may mask it: score them under an all-True mask (invalid anyway)
    mask = torch.where(live[..., None], w["action_mask"].bool(), torch.ones_like(w["action_mask"], dtype=torch.bool))
    actions = w["action"] if agent.discrete else w["action"].float()
    resets = ended.clone()
    resets[:, 0] = True  # as `RealActor`: a fresh state at the episode's start and after the agent's own end
    per_row = lambda x: rearrange(x, "k n ... -> (k n) ...")  # noqa: E731
    agent_ids = torch.arange(n, device=device).repeat(K)
    actor_state, critic_state = agent.policy.initial_state(K * n), agent.critic.initial_state(K * n)
    log_probs, values, actor_states, critic_states = [], [], [], []
    for t in range(R):
        actor_states.append(actor_state)
        critic_states.append(critic_state)
        out, actor_state = agent.policy.step(per_row(actor_in[:, t]), actor_state, per_row(resets[:, t]))
        log_probs.append(agent.log_prob_entropy(out, per_row(mask[:, t]), per_row(actions[:, t]))[0])
        state_rows = repeat(critic_in[:, t], "k c -> (k n) c", n=n)
        value, critic_state = agent.critic.step(state_rows, agent_ids, critic_state, per_row(resets[:, t]))
        values.append(value)
    to_kn = lambda x: rearrange(x, "(k n) ... -> k n ...", n=n)  # noqa: E731
    T = R - 1
    storage, ones = agent.new_storage(K, T), torch.ones(K, n, device=device)
    for t in range(T):
        nxt = t + 1
        step_live = live[:, t]
        done = ~step_live | ended[:, nxt] | last[:, nxt]
        boot = step_live & (truncated[:, nxt] | last[:, nxt]) & ~terminated[:, nxt]
        storage[t] = {
            "obs": actor_in[:, t], "state": critic_in[:, t], "alive": step_live, "action_mask": mask[:, t],
            "resets": resets[:, t], "actions": actions[:, t], "log_probs": to_kn(log_probs[t]), "values": to_kn(values[t]),
            "rewards": torch.where(step_live, w["reward"][:, nxt].float(), 0.0), "dones": done, "truncated": boot,
            "bootstrap_values": torch.where(boot, to_kn(values[nxt]), 0.0), "discounts": ones,
            "actor_state": {k: to_kn(v) for k, v in actor_states[t].items()},
            "critic_state": {k: to_kn(v) for k, v in critic_states[t].items()},
        }  # fmt: skip
    storage.last_values = to_kn(values[T])
    return storage
