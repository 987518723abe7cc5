"""Decentralized agents leave Python: one ONNX graph per agent type for one recurrent decision step.

```python
from exports import OnnxAgent, export_agent

export_agent(policy, "agent.onnx", spec=spec)      # GRU, Mamba or SP-Mamba policy
agent = OnnxAgent("agent.onnx", spec=spec)         # onnxruntime, CUDA provider where there is a GPU
agent.reset(batch_size=3)
actions = agent.act(obs, action_mask)              # (3,) int64; the recurrent state stays inside
```
"""

from exports.agent import OnnxAgent, default_providers, play_episode
from exports.onnx import EXPORT_FORMAT, export_agent

__all__ = ["EXPORT_FORMAT", "OnnxAgent", "default_providers", "export_agent", "play_episode"]
