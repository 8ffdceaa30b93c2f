"""Training: CoT-SFT and EBM-RL GRPO on video (TRL adapters)."""

import sys

from ebmrl.train import trl_args

# ``ebmrl.train.configs`` was this module's name (its ``grpo_args`` signature is a public
# contract); the name stays importable without a second file of that name.
sys.modules[__name__ + ".configs"] = trl_args
