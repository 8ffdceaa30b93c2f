"""What the demo's tiny models can tell apart, on the demo DAG's own clips.

    .venv/bin/python bench/demo_sight.py [--root .] [--vlm models/tiny/qwen2_5_vl]
        [--clip models/tiny/clip] [--captions 4]

Run it after `make demo`: it reads the DAG's outputs (`data/dataset`, `data/frames`, the
tiny models), so it sees each clip as the policy and the CLIP reward see it (decoded from
H.264, sampled and sized by the frames stage). Two tables, per scene attribute:

- the VLM, asked plainly to describe each clip (the caption pretraining's instruction,
  greedy): for each true value, what it states. SFT's perceptions rest on this sight:
  SFT teaches the model the format and to write what it sees, not to see more.
- the CLIP reward as a judge: for each clip, captions that differ only in that
  attribute's value, scored by ``ClipReward`` (the GRPO stage's reward); how often the
  true value's caption scores highest, against chance. What the judge cannot tell apart,
  GRPO cannot teach.

``metrics/tiny_models.json`` measures both models on held-out scenes they render
themselves; this script shows where each one's errors go on the clips the demo trains
and evaluates on.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np


def clip_attributes(root: Path) -> tuple[object, dict[str, dict]]:
    """The frame store and each clip's ground truth (clips of both splits, once each)."""
    from ebmrl.stages.inputs import load_training_inputs

    inputs = load_training_inputs(str(root / "data/dataset"), str(root / "data/frames"))
    truth: dict[str, dict] = {}
    for sample in inputs.train + inputs.test:
        if sample.scene_attributes is not None:
            truth.setdefault(sample.clip_id, sample.scene_attributes.model_dump())
    if not truth:
        raise SystemExit(f"no clip with known scene attributes under {root / 'data/dataset'}")
    return inputs.frames, truth


def attribute_values(truth: dict[str, dict]) -> dict[str, list]:
    """Each attribute's values among the clips (the options a judge chooses from)."""
    from ebmrl.scene_words import ATTRIBUTES

    return {name: sorted({t[name] for t in truth.values()}, key=str) for name in ATTRIBUTES}


def vlm_statements(vlm: str, frames, truth: dict[str, dict]) -> dict:
    """Per attribute: Counter of (true value, stated values) over the clips, from the
    captions the tiny_models stage's evaluation writes (plain instruction, greedy)."""
    from ebmrl import scene_words
    from ebmrl.models import load_vlm
    from ebmrl.models.caption_training import describe_clips

    model, processor = load_vlm(vlm, dtype="float32", device="cpu")
    model.eval()
    texts = describe_clips(model, processor, [frames.frames(c) for c in truth])
    tally = {name: Counter() for name in scene_words.ATTRIBUTES}
    for clip_id, text in zip(truth, texts, strict=True):
        stated = scene_words.read_statements(text)
        for name, counts in tally.items():
            said = ", ".join(sorted(map(str, stated[name]))) or "(nothing)"
            counts[(truth[clip_id][name], said)] += 1
    return tally


def clip_judgements(clip: str, frames, truth: dict[str, dict], captions: int, seed: int = 0):
    """Per attribute: (true value's caption ranked first, trials, mean margin over the others)."""
    from ebmrl import scene_words
    from ebmrl.rewards.clip import ClipReward, OpenClipEncoder

    reward = ClipReward(OpenClipEncoder.load(clip), frames)
    values = attribute_values(truth)
    rng = np.random.default_rng(seed)
    out = {}
    for name, options in values.items():
        if len(options) < 2:
            continue
        wins = trials = 0
        margins = []
        for clip_id, attrs in truth.items():
            for _ in range(captions):
                # One wording seed per trial: the captions differ only in this attribute.
                wording = int(rng.integers(2**31))
                texts = [
                    scene_words.write_caption({**attrs, name: v}, np.random.default_rng(wording))
                    for v in options
                ]
                scores = reward.score(
                    [f"<perception>{t}</perception>" for t in texts], [clip_id] * len(texts)
                ).values
                true = options.index(attrs[name])
                wins += int(np.argmax(scores) == true)
                trials += 1
                margins.append(scores[true] - np.delete(scores, true).mean())
        out[name] = (wins, trials, float(np.mean(margins)), 1.0 / len(options))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".", help="the repository with the demo's outputs")
    parser.add_argument(
        "--vlm", default="models/tiny/qwen2_5_vl", help="the base VLM (under --root)"
    )
    parser.add_argument("--clip", default="models/tiny/clip", help="the CLIP (under --root)")
    parser.add_argument("--captions", type=int, default=4, help="wordings per clip and attribute")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    root = Path(args.root)
    frames, truth = clip_attributes(root)
    print(f"{len(truth)} demo clips with known scene attributes\n")

    print(f"VLM {args.vlm}, plain instruction, greedy: true value -> stated (clips)")
    for name, counts in vlm_statements(str(root / args.vlm), frames, truth).items():
        right = sum(n for (true, said), n in counts.items() if said == str(true))
        print(f"  {name}: {right}/{sum(counts.values())} right")
        for true in sorted({t for t, _ in counts}, key=str):
            said = ", ".join(
                f"{s} {n}"
                for (t, s), n in sorted(counts.items(), key=lambda kv: -kv[1])
                if t == true
            )
            print(f"    {true}: {said}")

    print(f"\nCLIP {args.clip} as the reward's judge: captions differing in one attribute")
    for name, (wins, trials, margin, chance) in clip_judgements(
        str(root / args.clip), frames, truth, args.captions
    ).items():
        print(
            f"  {name}: true value first {wins}/{trials} = {wins / trials:.2f} "
            f"(chance {chance:.2f}), mean margin {margin:+.4f}"
        )


if __name__ == "__main__":
    main()
