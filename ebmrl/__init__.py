"""EBM-RL: train a video VLM to see (<perception>), think (<think>) and speak (<answer>) in character."""

__version__ = "0.1.0"

# The package's layers, lowest first. A module imports only from its own unit (a top-level
# module or subpackage) and from units in lower layers; units that share a layer are
# independent of each other. tests/test_layers.py holds the code to this order.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tags", "io", "video", "scene_words"),  # tag parsing, atomic files, decoding, demo words
    ("config", "schema", "frame_store"),  # params.yaml, the data records, the frame store
    ("demo", "prompts", "fidelity"),  # demo clips; prompt building; ours vs the authors'
    ("models",),  # loading, running and building (tiny) models
    ("backends", "rewards"),  # generation clients; the four rewards and their registry
    ("data", "train"),  # the data stages' work; SFT and GRPO
    ("eval",),  # evaluation: generation, judge, metrics, report
    ("edge",),  # MLflow tracking, the HTTP server, profiles, exit codes
    ("stages", "cli"),  # the entry points dvc.yaml and the Prefect flows call
)
