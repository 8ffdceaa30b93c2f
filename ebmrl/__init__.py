"""EBM-RL: train a video VLM to see (<perception>), think (<think>) and speak (<answer>) in character."""

__version__ = "0.1.0"
