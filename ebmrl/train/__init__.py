"""Training: role-play prompts, CoT-SFT and EBM-RL GRPO on video (TRL adapters)."""
