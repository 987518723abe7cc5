"""RolloutStorage: validated ``storage[t] = ...`` writes, and chunks that cut (env, agent) sequences with padding."""

import pytest
import torch

from agents.storage import RolloutStorage, length_groups

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
        "discounts": torch.ones(E, N),
        "actor_state": {"h": torch.full((E, N, 1, 8), float(t))}, "critic_state": {},
    }  # fmt: skip


def test_chunks_follow_sequences_with_padding():
    """Chunk rows follow (chunk, env, agent) order; padding is invalid, unmasked, reset-free; states are chunk-start ones."""
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
    assert ch.lengths.tolist() == [2] * (2 * E * N) + [1] * (E * N)  # the last chunk holds step 4 only
    cut = ch.trim(1)
    assert cut.obs.shape == (3 * E * N, 1, D) and cut.valid.shape == (3 * E * N, 1) and torch.equal(cut.obs, ch.obs[:, :1])
    assert torch.equal(cut.agent, ch.agent) and torch.equal(cut.lengths, ch.lengths) and cut.actor_state is ch.actor_state
    with pytest.raises(ValueError, match=r"steps: expected 1 <= steps <= L=2, got 3"):
        ch.trim(3)


def test_length_groups_in_storage_order_and_shuffled():
    """Storage order gives one slice per length, longest first, already in row order; a shuffled subset gives index
    groups and the permutation that puts their concatenation back in row order; one length is one group."""
    groups, order = length_groups(torch.tensor([3, 3, 3, 3, 1, 1]))
    assert groups == [(slice(0, 4), 3), (slice(4, 6), 1)] and order is None
    lengths = torch.tensor([1, 3, 3, 1, 3])
    groups, order = length_groups(lengths)
    assert [(r.tolist(), n) for r, n in groups] == [([1, 2, 4], 3), ([0, 3], 1)]
    cat = torch.cat([lengths[r] * 10 + r for r, _ in groups])  # tag each row with its length and index
    assert torch.equal(cat[order], lengths * 10 + torch.arange(5))
    assert length_groups(torch.tensor([2, 2])) == ([(slice(None), 2)], None)


def test_writes_are_validated():
    """Unwritten steps, wrong shapes, missing keys, wrong state keys, bad t and bad chunk arguments raise."""
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


@pytest.mark.parametrize("name", ["length", "num_envs", "n_agents", "obs_dim", "state_dim", "n_actions"])
def test_sizes_must_be_positive_integers(name):
    """Each size argument is checked by name."""
    sizes = dict(length=T, num_envs=E, n_agents=N, obs_dim=D, state_dim=S, n_actions=A)
    sizes[name] = 0
    with pytest.raises(ValueError, match=rf"^{name}: expected an integer >= 1, got 0$"):
        RolloutStorage(**sizes, actor_state_shapes={}, critic_state_shapes={})


def test_error_messages_name_what_is_wrong():
    """Unknown attributes, wrong keys, recurrent-state shapes and chunk targets: anchored messages."""
    st = _storage()
    with pytest.raises(AttributeError, match=r"^RolloutStorage has no attribute 'nope'$"):
        st.nope  # noqa: B018
    bad = _step(0)
    bad["extra"] = torch.zeros(1)
    del bad["dones"]
    with pytest.raises(
        ValueError, match=r"^step: expected keys \['obs', .*, 'critic_state'\]; missing \['dones'\], unexpected \['extra'\]$"
    ):
        st[0] = bad
    bad = _step(0)
    bad["actor_state"] = {"h": torch.zeros(E, N, 8)}
    with pytest.raises(ValueError, match=r"^step\['actor_state'\]\['h'\]: expected shape \(2, 3, 1, 8\), got \(2, 3, 8\)$"):
        st[0] = bad
    with pytest.raises(ValueError, match=r"^t: expected an integer in \[0, 5\), got 1.0$"):
        st[1.0] = _step(0)
    for t in range(T):
        st[t] = _step(t)
    for name in ("advantages", "returns"):
        targets = {"advantages": torch.zeros(T, E, N), "returns": torch.zeros(T, E, N)}
        targets[name] = torch.zeros(T, E, N + 1)
        with pytest.raises(ValueError, match=rf"^{name}: expected shape \(5, 2, 3\), got \(5, 2, 4\)$"):
            st.chunks(2, **targets)


def test_critic_state_chunks_and_step_counts():
    """A recurrent critic's state is chunked like the actor's; len() is T; clear() unmarks every step."""
    st = RolloutStorage(T, E, N, D, S, A, {"h": (1, 8)}, {"c": (2,)})
    assert len(st) == T
    for t in range(T):
        step = _step(t)
        step["critic_state"] = {"c": torch.full((E, N, 2), 10.0 * t) + torch.arange(E * N).view(E, N, 1)}
        st[t] = step
    ch = st.chunks(3, torch.zeros(T, E, N), torch.zeros(T, E, N))  # C = 2: chunks start at steps 0 and 3
    assert ch.critic_state["c"].shape == (2 * E * N, 2)
    # row (c*E + e)*N + n holds the critic state of (e, n) before step 3c: 10 * 3c + e*N + n
    rows = torch.arange(2 * E * N)
    c, en = rows // (E * N), rows % (E * N)
    torch.testing.assert_close(ch.critic_state["c"][:, 0], 30.0 * c + en)
    st.clear()
    with pytest.raises(RuntimeError, match=r"^storage: steps \[0, 1, 2, 3, 4\] were not written$"):
        st.check_full()


def test_tensors_live_on_the_requested_device():
    """Storage and chunk tensors go to ``device``, not to torch's default device."""
    with torch.device("meta"):  # anything created without an explicit device would land here
        st = RolloutStorage(T, E, N, D, S, A, {"h": (1, 8)}, {"c": (2,)}, device="cpu")
    assert st.device == torch.device("cpu")
    tensors = [*st.data.values(), *st.actor_state.values(), *st.critic_state.values(), st.last_values]
    assert all(x.device.type == "cpu" for x in tensors)
    st = RolloutStorage(T, E, N, D, S, A, {"h": (1, 8)}, {}, device="cpu")
    for t in range(T):
        st[t] = _step(t)
    with torch.device("meta"):
        ch = st.chunks(2, torch.zeros(T, E, N), torch.zeros(T, E, N))
    assert ch.agent.device.type == "cpu" and ch.valid.device.type == "cpu"
