"""The ``llmri`` commands, one module per family; :mod:`llmri.cli` registers them.

Each module calls library functions only (never ``llmri.cli``) and imports anything heavy inside
its commands, so ``llmri --help`` loads no torch, pandas or plotly. To add a command: write it
in the module of its family (or a new one) with ``@click.command`` and add it to :data:`COMMANDS`.
"""

from __future__ import annotations

from .causal import ablate_cmd, patch_cmd
from .circuit import circuit_cmd
from .decoder import generate_cmd, steer_cmd
from .explain import explain_cmd
from .inspect import attention_cmd, neurons_cmd, probe_cmd
from .sae import sae_group, sae_train_cmd
from .scan import demo_cmd, report_cmd, scan_cmd

# commands whose work survives an interruption (shards on disk, cached calls, checkpoints): a rerun
# continues; the value names the option that makes it so (None: always)
RESUMABLE = {scan_cmd: None, demo_cmd: None, explain_cmd: None, sae_train_cmd: "--model"}
COMMANDS = (scan_cmd, report_cmd, demo_cmd, attention_cmd, neurons_cmd, probe_cmd, ablate_cmd, patch_cmd,
            explain_cmd, generate_cmd, steer_cmd, sae_group, circuit_cmd)
