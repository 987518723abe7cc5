"""Mamba-1 and Mamba-2 blocks: pure-PyTorch reference with O(1) steps, mamba-ssm kernels on CUDA.

```python
from wmenv.models.ssm import Mamba, Mamba2

block = Mamba(d_model=64)                      # or Mamba(MambaConfig(...)), Mamba2(d_model=64, headdim=32)
y = block(x, resets=resets)                    # x (B, L, 64), resets (B, L): zero state at episode starts
state = block.initial_state(batch_size=16)
y_t, state = block.step(x_t, state)            # x_t (B, 64); the state is returned new
```
"""

from wmenv.models.ssm.block import SSMBlock, SSMState
from wmenv.models.ssm.kernels import HAS_MAMBA_SSM, INSTALL_HINT
from wmenv.models.ssm.mamba2_ref import Mamba2, Mamba2Config, RMSNormGated
from wmenv.models.ssm.mamba_ref import Mamba, MambaConfig
from wmenv.models.ssm.scan import selective_scan_naive, selective_scan_ref
from wmenv.models.ssm.ssd import ssd_chunked, ssd_naive

__all__ = [
    "HAS_MAMBA_SSM",
    "INSTALL_HINT",
    "Mamba",
    "Mamba2",
    "Mamba2Config",
    "MambaConfig",
    "RMSNormGated",
    "SSMBlock",
    "SSMState",
    "selective_scan_naive",
    "selective_scan_ref",
    "ssd_chunked",
    "ssd_naive",
]
