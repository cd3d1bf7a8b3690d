"""The llama-cpp-python peer: its own multimodal chat path (``Llama.create_chat_completion``
with ``Llava15ChatHandler``, which runs llama.cpp's mtmd) on the bundle's GGUF and mmproj.

What an app that uses llama-cpp-python directly would get. Its sampler's calls
(a logits processor that only notes the time) mark each token; the image
encode happens inside the time to the first one and has no number of its own
(None), nor has its prefill rate; the stream yields text, so it has no token
ids either.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from mobilevlm.bench.variants import fastest_gguf
from mobilevlm.generation.decode_loop import Prompt
from mobilevlm.generation.preprocess import ImageInput, load_image
from mobilevlm.generation.prompts import get_template
from mobilevlm.generation.result import GenerationResult, GenerationStats
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.llamacpp.model import import_llama_cpp, open_llama

BANNED = -1e9  # a logit that keeps a token from being sampled


def data_url(image: ImageInput) -> str:
    pixels = image if isinstance(image, Image.Image) else load_image(image)
    buffer = io.BytesIO()
    pixels.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class LlamaCppPythonChat:
    def __init__(
        self,
        root: str | Path,
        precision: str | None = None,
        threads: int | None = None,
        context: int = 2048,
    ) -> None:
        root = Path(root)
        manifest = BundleManifest.read(root)
        self.config = manifest.model
        self.precision = precision or fastest_gguf(manifest)
        self._lib = import_llama_cpp()
        from llama_cpp.llama_chat_format import Llava15ChatHandler

        mmproj = root / manifest.find("mmproj", "f16").path
        handler = Llava15ChatHandler(clip_model_path=str(mmproj), verbose=False)
        gguf = root / manifest.find("llm", self.precision).path
        self.llama = open_llama(gguf, context, threads, chat_handler=handler)

    def reset(self) -> None:
        self.llama.reset()

    def generate(
        self,
        image: ImageInput | None,
        prompt: Prompt,
        config: GenerationConfig | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        if not isinstance(prompt, str):
            raise TypeError("the llama-cpp-python peer answers one question at a time")
        config = config or GenerationConfig()
        template = get_template(self.config.template)
        system = self.config.system_prompt or template.default_system
        content: list[dict] = [{"type": "text", "text": prompt}]
        if image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
        banned = list(self.config.llm.eos_token_ids) if config.ignore_eos else []
        stats = GenerationStats(image_encode_ms=float("nan"))
        sampled: list[tuple[float, int]] = []  # (when, positions so far) per token sampled

        def clock(input_ids, scores):
            sampled.append((time.perf_counter(), self.llama.n_tokens))
            scores[banned] = BANNED
            return scores

        start = time.perf_counter()
        self.llama.reset()
        chunks = self.llama.create_chat_completion(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": content}],
            temperature=config.temperature,
            top_k=config.top_k if config.temperature else 1,
            top_p=config.top_p,
            min_p=0.0,
            repeat_penalty=config.repetition_penalty,
            max_tokens=config.max_new_tokens,
            seed=config.seed,
            # not logit_bias: with a logits processor too, llama-cpp-python 0.3.36 drops
            # both (``LogitsProcessorList.extend`` returns None)
            logits_processor=self._lib.LogitsProcessorList([clock]),
            stream=True,
        )
        pieces: list[str] = []
        for chunk in chunks:
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                pieces.append(piece)
                if on_text:
                    on_text(piece)
        # the text stream may hold pieces back; the sampler's calls mark the tokens
        if sampled:
            (first, prompt_positions), (last, _) = sampled[0], sampled[-1]
            stats.generated_tokens = len(sampled)
            stats.image_tokens = self.config.num_image_tokens if image is not None else 0
            stats.prompt_tokens = prompt_positions - stats.image_tokens
            stats.prefill_ms = (first - start) * 1000.0  # image encode included
            stats.decode_ms = (last - first) * 1000.0
        stats.total_ms = (time.perf_counter() - start) * 1000.0
        # the stream yields text, not token ids: no token agreement for this peer
        return GenerationResult("".join(pieces), [], stats)
