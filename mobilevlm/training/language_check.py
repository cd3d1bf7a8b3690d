"""How much of SmolLM2's language the default model keeps.

``python -m mobilevlm.training.language_check`` asks each of CHECK_PROMPTS
(never trained on) three ways, greedy: the base LLM alone; the default model
without an image; the default model after an image turn about
``examples/shapes.png``. It prints the card's table and how many answers are
the base LLM's word for word. Word-for-word is strict on purpose: the adapter
was trained to reproduce those answers, so any drift shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mobilevlm.default_model.assemble import base_model, load_default_model
from mobilevlm.default_model.text_prompts import CHECK_PROMPTS
from mobilevlm.generation.prompts import Turn
from mobilevlm.generation.sampling import GenerationConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shapes.png"
IMAGE_TURN = "What color is the circle?"


def _cell(text: str, width: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mobilevlm.training.language_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--image", type=Path, default=EXAMPLE, help="for the image turn")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    base, model = base_model(), load_default_model()
    first = model.generate(args.image, IMAGE_TURN, config).text
    print(f"image turn: {IMAGE_TURN!r} -> {first!r}\n")
    print("| question | base LLM | default model, no image | after the image turn |")
    print("| --- | --- | --- | --- |")
    same = [0, 0]
    for question in CHECK_PROMPTS:
        expected = base.generate(None, question, config).text
        alone = model.generate(None, question, config).text
        after = model.generate(args.image, [Turn(IMAGE_TURN, first), Turn(question)], config).text
        same[0] += alone.strip() == expected.strip()
        same[1] += after.strip() == expected.strip()
        print(f"| {question} | {_cell(expected)} | {_cell(alone)} | {_cell(after)} |")
    n = len(CHECK_PROMPTS)
    print(f"\nthe base LLM's answer word for word: {same[0]}/{n} without an image, "
          f"{same[1]}/{n} after the image turn")  # fmt: skip


if __name__ == "__main__":
    main()
