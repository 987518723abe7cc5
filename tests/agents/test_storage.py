"""RolloutStorage: validated ``storage[t] = ...`` writes, and chunks that cut (env, agent) sequences with padding."""

import pytest
import torch

from agents.storage import RolloutStorage

T, E, N, D, S, A = 5, 2, 3, 4, 6, 3


def _storage():
    return RolloutStorage(T, E, N, D, S, A, {"h": (1, 8)}, {})


def _step(t):
    return {
        "obs": torch.full((E, N, D), float(t)), "state": torch.full((E, S), float(t)),
        "alive": torch.ones(E, N, dtype=torch.bool), "action_mask": torch.ones(E, N, A, dtype=torch.bool),
        "resets": torch.zeros(E, N, dtype=torch.bool), "actions": torch.full((E, N), t % A),
        "log_probs": torch.full((E, N), -float(t)), "values": torch.arange(E * N).view(E, N) + 10.0 * t,
        "rewards": torch.ones(E, N), "dones": torch.zeros(E, N, dtype=torch.bool),
        "truncated": torch.zeros(E, N, dtype=torch.bool), "bootstrap_values": torch.zeros(E, N),
        "actor_state": {"h": torch.full((E, N, 1, 8), float(t))}, "critic_state": {},
    }  # fmt: skip


def test_chunks_follow_sequences_with_padding():
    st = _storage()
    for t in range(T):
        st[t] = _step(t)
    ret = torch.randn(T, E, N)
    ch = st.chunks(2, torch.zeros(T, E, N), ret)  # C = 3 chunks of 2 steps, the last padded by one
    assert len(ch) == 3 * E * N and ch.obs.shape == (3 * E * N, 2, D) and ch.state.shape == (3 * E * N, 2, S)
    # chunk c of (env e, agent n) is row (c*E + e)*N + n and holds steps 2c, 2c + 1
    for c in range(3):
        for e in range(E):
            for n in range(N):
                row = (c * E + e) * N + n
                assert ch.agent[row] == n
                for i, t in enumerate((2 * c, 2 * c + 1)):
                    if t < T:
                        assert ch.values[row, i] == e * N + n + 10.0 * t and ch.obs[row, i, 0] == t
                        assert ch.returns[row, i] == ret[t, e, n] and ch.valid[row, i]
                    else:
                        assert not ch.valid[row, i] and ch.action_mask[row, i].all() and not ch.resets[row, i]
                assert ch.actor_state["h"][row, 0, 0] == 2 * c  # the stored state before the chunk's first step
    sub = ch.index(torch.tensor([4, 0]))
    assert torch.equal(sub.values, ch.values[[4, 0]]) and torch.equal(sub.actor_state["h"], ch.actor_state["h"][[4, 0]])


def test_writes_are_validated():
    st = _storage()
    with pytest.raises(RuntimeError, match=r"steps \[0, 1, 2, 3, 4\] were not written"):
        st.chunks(2, torch.zeros(T, E, N), torch.zeros(T, E, N))
    bad = _step(0)
    bad["obs"] = torch.zeros(E, N, D + 1)
    with pytest.raises(ValueError, match=r"step\['obs'\]: expected shape \(2, 3, 4\), got \(2, 3, 5\)"):
        st[0] = bad
    bad = _step(0)
    del bad["rewards"]
    with pytest.raises(ValueError, match=r"missing \['rewards'\]"):
        st[0] = bad
    bad = _step(0)
    bad["actor_state"] = {"c": torch.zeros(E, N, 1, 8)}
    with pytest.raises(ValueError, match=r"step\['actor_state'\]: expected keys \['h'\]"):
        st[0] = bad
    with pytest.raises(ValueError, match=r"t: expected an integer in \[0, 5\), got 5"):
        st[5] = _step(0)
    for t in range(T):
        st[t] = _step(t)
    with pytest.raises(ValueError, match=r"advantages: expected shape \(5, 2, 3\)"):
        st.chunks(2, torch.zeros(T, E), torch.zeros(T, E, N))
    with pytest.raises(ValueError, match="chunk_length: expected an integer >= 1, got 0"):
        st.chunks(0, torch.zeros(T, E, N), torch.zeros(T, E, N))
    with pytest.raises(ValueError, match="num_envs: expected an integer >= 1, got 0"):
        RolloutStorage(T, 0, N, D, S, A, {}, {})
