"""Streamed text is final text: nothing a stop string or a split character would take back."""

from __future__ import annotations

from tiny_models import tiny_tokenizer

from mobilevlm.generation.streaming import TextStream


def stream_all(tokenizer, ids, stops=()):
    stream = TextStream(tokenizer, stops)
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.finish())
    return stream, pieces


def test_pieces_concatenate_to_the_decoded_text():
    tok = tiny_tokenizer()
    ids = tok.encode("How many shapes are there? three")
    stream, pieces = stream_all(tok, ids)
    assert "".join(pieces) == stream.text == tok.decode(ids)
    assert not stream.stopped


def test_stop_string_cuts_the_text_and_is_never_streamed():
    tok = tiny_tokenizer()
    ids = tok.encode("red circle USER: blue")
    stream, pieces = stream_all(tok, ids, stops=("USER:",))
    assert stream.stopped and stream.text == "red circle "
    assert "".join(pieces) == "red circle "
    assert all("US" not in p for p in pieces)


def test_a_possible_stop_prefix_is_held_then_released():
    tok = tiny_tokenizer()
    ids = tok.encode("red USE")
    stream = TextStream(tok, ("USER:",))
    streamed = "".join(stream.push(i) for i in ids)
    assert "USE" not in streamed
    assert streamed + stream.finish() == "red USE"


def test_incomplete_utf8_is_held_back():
    tok = tiny_tokenizer()
    ids = tok.encode("é")
    assert len(ids) == 2  # the tiny vocabulary has no merge for its two UTF-8 bytes
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert pieces[0] == "" and all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + stream.finish() == "é"
