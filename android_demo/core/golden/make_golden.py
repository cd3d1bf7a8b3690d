"""Golden files for the Java core's JUnit tests, written by the Python runtime.

``python make_golden.py OUT`` (``make android-golden``) writes into OUT (the core's build
folder, never committed; regenerated, never edited): token ids of a corpus, decoded texts and
streamed pieces, rendered prompts, pixel tensors of generated images, sampler choices given
recorded uniform draws, bundle errors, and a recorded generation of the built-in model (the image
embeddings and every step's logits, greedy and seeded-sampled, each over two turns).

Only the torch-free runtime runs here (the built-in model's bundle is exported into the cache
first if it is missing, as the tests do). The seeded run draws its uniform numbers from
SplitMix64, the Java side's own generator, so that the Java sampler must reproduce Python's
choices from the same draws.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mobilevlm.errors import MobileVLMError
from mobilevlm.generation import decode_loop, sampling
from mobilevlm.generation.preprocess import preprocess
from mobilevlm.generation.prompts import Turn, get_template
from mobilevlm.generation.streaming import TextStream
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import default_bundle
from mobilevlm.runtime.options import LoadOptions
from mobilevlm.runtime.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_cases as cases  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
MASK = (1 << 64) - 1


class SplitMix64:
    """The Java core's SeededRandom: SplitMix64, a double from each output's top 53 bits."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK
        self.draws: list[float] = []

    def random(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        value = (z >> 11) * 2.0**-53
        self.draws.append(value)
        return value


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def error_of(call) -> str:
    try:
        call()
    except MobileVLMError as exc:
        return str(exc)
    raise AssertionError("expected an error")


# ---------------------------------------------------------------- tokenizer, streaming, prompts


def tokenizer_goldens(out: Path, tokenizer: Tokenizer) -> None:
    rng = np.random.default_rng(7)
    encoded = [{"text": t, "ids": tokenizer.encode(t)} for t in cases.CORPUS]
    decoded = []
    for entry in encoded:
        ids = entry["ids"]
        for cut in sorted({1, len(ids) // 2, len(ids) - 1}):
            if 0 < cut < len(ids):
                decoded.append({"ids": ids[:cut], "text": tokenizer.decode(ids[:cut])})
    for _ in range(30):
        ids = rng.integers(0, tokenizer.vocab_size, size=int(rng.integers(1, 12))).tolist()
        decoded.append({"ids": ids, "text": tokenizer.decode(ids)})
    decoded.append({"ids": [1, 9690, 2, 0], "text": tokenizer.decode([1, 9690, 2, 0])})
    prompts = [{"text": p, "ids": tokenizer.encode_prompt(p)} for p in cases.PROMPT_TEXTS]
    facts = {
        "vocab_size": tokenizer.vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "token_to_id": {t: tokenizer.token_to_id(t) for t in cases.TOKEN_NAMES},
    }
    write_json(
        out / "tokens.json",
        {"encode": encoded, "decode": decoded, "prompts": prompts, "facts": facts},
    )
    streams = []
    for text, stops in cases.STREAMS:
        ids = tokenizer.encode(text)
        stream = TextStream(tokenizer, stops)
        pushed = []
        for token in ids:
            pushed.append(stream.push(token))
            if stream.stopped:
                break
        streams.append(
            {
                "ids": ids,
                "stops": list(stops),
                "pieces": pushed,
                "finish": stream.finish(),
                "text": stream.text,
                "stopped": stream.stopped,
            }
        )
    write_json(out / "streams.json", streams)


def prompt_goldens(out: Path) -> None:
    rendered = []
    for name, turns, system, with_image in cases.PROMPTS:
        entry = {"template": name, "turns": turns, "system": system, "with_image": with_image}
        try:
            template = get_template(name)
            entry["text"] = template.render(
                [Turn(u, a) for u, a in turns], system=system, with_image=with_image
            )
        except MobileVLMError as exc:
            entry["error"] = str(exc)
        rendered.append(entry)
    write_json(out / "prompts.json", rendered)


# ---------------------------------------------------------------- images


def image_goldens(out: Path, manifest: BundleManifest) -> None:
    folder = out / "images"
    folder.mkdir()
    entries = []
    for name, make, config_changes in cases.images(np.random.default_rng(3)):
        file = folder / name
        make(file)
        config = manifest.model.preprocess
        if config_changes:
            config = type(config).from_dict({**config.to_dict(), **config_changes})
        pixels = preprocess(file, config)
        np.save(folder / f"{file.stem}.npy", pixels)
        with Image.open(file) as im:
            mode = im.mode
        entries.append(
            {
                "image": f"images/{name}",
                "pixels": f"images/{file.stem}.npy",
                "mode": mode,
                "config": config.to_dict(),
            }  # fmt: skip
        )
    write_json(out / "images.json", entries)


# ---------------------------------------------------------------- sampler


def sampler_goldens(out: Path) -> None:
    rng = np.random.default_rng(11)
    logits_rows, entries = [], []
    for k, (vocab, settings, context) in enumerate(cases.SAMPLER_CASES):
        config = sampling.GenerationConfig(**settings)
        source = SplitMix64(1000 + k)
        sampler = sampling.Sampler(config, vocab, context)
        sampler.rng = source
        first = len(logits_rows)
        tokens = []
        for step in range(6):
            row = (rng.standard_normal(vocab) * (2 + step)).astype(np.float32)
            if k % 3 == 0:  # ties and a quantized spread, as low-precision logits have
                row = np.round(row * 2) / 2
            logits_rows.append(row)
            tokens.append(sampler(row))
        entries.append(
            {"vocab": vocab, "settings": settings, "context": list(context),
             "seed": 1000 + k, "first_row": first, "draws": source.draws, "tokens": tokens}
        )  # fmt: skip
    width = max(len(r) for r in logits_rows)
    table = np.full((len(logits_rows), width), np.nan, dtype=np.float32)
    for i, row in enumerate(logits_rows):
        table[i, : len(row)] = row
    np.save(out / "sampler_logits.npy", table)
    write_json(out / "sampler.json", entries)


# ---------------------------------------------------------------- JSON


def json_goldens(out: Path) -> None:
    """Python's json.loads on each text: the value's repr, or the error message."""
    entries = []
    for text in cases.JSON_TEXTS:
        try:
            entries.append({"text": text, "repr": repr(json.loads(text))})
        except json.JSONDecodeError as exc:
            entries.append({"text": text, "error": str(exc)})
    write_json(out / "json.json", entries)


# ---------------------------------------------------------------- bundle errors


def bundle_error_goldens(out: Path, manifest_text: str) -> None:
    root = out / "bundles"
    root.mkdir()
    entries = []
    for name, mutate, files, verify in cases.bundle_cases(manifest_text):
        directory = root / name
        directory.mkdir()
        for relative, content in files.items():
            (directory / relative).parent.mkdir(parents=True, exist_ok=True)
            (directory / relative).write_bytes(content)
        if mutate is not None:
            (directory / "bundle.json").write_text(mutate, encoding="utf-8")

        def check(directory=directory, verify=verify):
            manifest = BundleManifest.read(directory)
            if verify:
                from mobilevlm.runtime.verify import verify_files

                verify_files(directory, manifest.artefacts, "full")
            return manifest

        try:
            check()
            message = None
        except MobileVLMError as exc:
            message = str(exc).replace(str(directory), "{dir}")
        entries.append({"name": name, "verify": verify, "error": message})
    write_json(out / "bundles.json", entries)


# ---------------------------------------------------------------- the recorded generation


def history_items(history) -> list:
    """Cached positions as the Java replay names them: a token id, or image:ROW."""
    return [i if isinstance(i, int) else "image:" + i.rsplit(":", 1)[1] for i in history]


def record_generation(out: Path, bundle: Path) -> None:
    pipeline = Pipeline.load(bundle)
    model = pipeline.model
    steps: list[dict] = []
    logits_rows: list[np.ndarray] = []
    prefill, decode = model.prefill_prompt, model.decode

    def remember(logits):
        steps.append({"content": history_items(model._history), "row": len(logits_rows)})
        logits_rows.append(np.array(logits, dtype=np.float32))
        return logits

    model.prefill_prompt = lambda ids, embeds: remember(prefill(ids, embeds))
    model.decode = lambda token: remember(decode(token))
    sources: list[SplitMix64] = []

    class RecordedSampler(sampling.Sampler):
        def __init__(self, config, vocab_size, context_ids=()):
            super().__init__(config, vocab_size, context_ids)
            if not config.greedy:
                self.rng = SplitMix64(cases.SAMPLED_SEED)
                sources.append(self.rng)

    decode_loop.Sampler = RecordedSampler
    image = REPO / "examples" / "shapes.png"
    embeds = pipeline.encode_image(image)
    np.save(out / "image_embeds.npy", embeds.astype(np.float32))
    np.save(out / "image_pixels.npy", preprocess(image, model.config.preprocess))
    runs = []
    for name, settings, questions, with_image in cases.GENERATION_RUNS:
        model.reset()
        conversation = pipeline.conversation(image if with_image else None)
        turns = []
        for question in questions:
            config = sampling.GenerationConfig(**settings)
            first_step, before = len(steps), len(sources)
            pieces: list[str] = []
            result = conversation.ask(question, config, on_text=pieces.append)
            draws = [d for s in sources[before:] for d in s.draws]
            turns.append(
                {"question": question, "tokens": result.token_ids, "text": result.text,
                 "pieces": pieces, "stop_reason": result.stats.stop_reason,
                 "cached_tokens": result.stats.cached_tokens, "image_tokens":
                 result.stats.image_tokens, "prompt_tokens": result.stats.prompt_tokens,
                 "steps": steps[first_step:], "draws": draws}
            )  # fmt: skip
        runs.append({"name": name, "settings": settings, "with_image": with_image, "turns": turns})
    np.save(out / "generation_logits.npy", np.stack(logits_rows))
    write_json(
        out / "generation.json",
        {"image": str(image), "seed": cases.SAMPLED_SEED, "context": model.context_length,
         "hidden_size": model.config.llm.hidden_size, "runs": runs},
    )  # fmt: skip


def main(out: Path) -> None:
    bundle = default_bundle(LoadOptions(), progress=False)
    manifest = BundleManifest.read(bundle)
    tokenizer = Tokenizer.from_file(bundle / manifest.tokenizer)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_json(tmp / "index.json", {"bundle": str(bundle.resolve())})
    tokenizer_goldens(tmp, tokenizer)
    prompt_goldens(tmp)
    image_goldens(tmp, manifest)
    sampler_goldens(tmp)
    json_goldens(tmp)
    bundle_error_goldens(tmp, (bundle / "bundle.json").read_text(encoding="utf-8"))
    record_generation(tmp, bundle)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"golden files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
