"""Token ids -> text increments for streaming, cut at stop strings (torch-free).

Text is released only when it is final: an incomplete UTF-8 sequence at the
end (decoded as U+FFFD) and any tail that could still grow into a stop string
are held back, so a streaming consumer never sees text that the final answer
does not contain.
"""

from __future__ import annotations

from collections.abc import Sequence

from mobilevlm.generation.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.ids: list[int] = []
        self.text = ""  # the answer so far, final up to `emitted`
        self.emitted = 0
        self.stopped = False  # a stop string has appeared; `text` ends before it

    def push(self, token_id: int) -> str:
        """Add one generated token; return the newly final text (may be empty)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        cut = self._first_stop(self.text)
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            return self._release(len(self.text))
        if self.text.endswith("\ufffd"):
            return ""
        return self._release(len(self.text) - self._stop_prefix_len(self.text))

    def finish(self) -> str:
        """Release whatever is held back once generation has ended."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece = self.text[self.emitted : upto]
        self.emitted = upto
        return piece

    def _first_stop(self, text: str) -> int | None:
        # only the unreleased tail (plus overlap) can hold a new stop string
        start = max(0, self.emitted - max((len(s) for s in self.stop_strings), default=0))
        hits = [i for s in self.stop_strings if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        best = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
