"""The Shapes-VQA generator follows the spec, and the scorer applies the spec's rule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mobilevlm import shapes_vqa as sv


@pytest.fixture(scope="module")
def samples():
    return [sv.sample("train", i) for i in range(400)]


def test_samples_are_a_pure_function_of_split_and_index():
    a, b = sv.sample("heldout", 7), sv.sample("heldout", 7)
    assert a == b
    assert np.array_equal(np.asarray(a.image()), np.asarray(b.image()))
    assert sv.sample("train", 7).scene != a.scene


def test_scenes_follow_the_spec(samples):
    for s in samples:
        scene = s.scene
        assert sv.MIN_SIDE <= scene.side <= sv.MAX_SIDE
        assert scene.background in sv.BACKGROUNDS
        assert 1 <= len(scene.objects) <= 5
        for o in scene.objects:
            assert o.shape in sv.SHAPES and o.color in sv.COLORS
            assert max(abs(c - b) for c, b in zip(o.rgb, sv.COLORS[o.color], strict=True)) <= 12
            assert 0.12 <= o.size <= 0.30
            assert o.size / 2 <= o.cx <= 1 - o.size / 2 and o.size / 2 <= o.cy <= 1 - o.size / 2
            assert abs(o.rotation) <= 15 and (o.shape != "circle" or o.rotation == 0)
        boxes = [(o.cx, o.cy, o.size) for o in scene.objects]
        for i, (x1, y1, s1) in enumerate(boxes):  # bounding boxes never overlap
            for x2, y2, s2 in boxes[i + 1 :]:
                assert abs(x1 - x2) > (s1 + s2) / 2 or abs(y1 - y2) > (s1 + s2) / 2


def test_every_free_choice_varies(samples):
    scenes = [s.scene for s in samples]
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4, 5}
    assert {s.background for s in scenes} == set(sv.BACKGROUNDS)
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(sv.SHAPES)
    assert {o.color for o in objects} == set(sv.COLORS)
    assert {o.position for o in objects} == set(sv.POSITION_NAMES)
    assert {a for s in scenes for a in s.antialias} == {True, False}
    assert min(s.side for s in scenes) < 400 and max(s.side for s in scenes) > 900


def test_polygon_bounding_box_has_the_object_size():
    obj = sv.SceneObject("star", "red", (230, 25, 25), 0.5, 0.5, 0.2, 12.0, 0.4)
    pts = sv.object_polygon(obj, 500)
    assert (pts.max(axis=0) - pts.min(axis=0)).max() == pytest.approx(100)
    assert pts.mean(axis=0) == pytest.approx([250, 250], abs=15)


def test_rendered_pixels_show_the_objects_colors():
    s = sv.sample("heldout", 3)
    pixels = np.asarray(s.image()).reshape(-1, 3).astype(int)
    assert s.image().size == (s.scene.side, s.scene.side)
    for o in s.scene.objects:
        assert (np.abs(pixels - np.array(o.rgb)).max(axis=1) == 0).sum() > 0.5 * (
            o.size * s.scene.side
        ) ** 2 * 0.3
    bg = sv.BACKGROUNDS[s.scene.background]
    assert (np.abs(pixels - np.array(bg)).max(axis=1) == 0).mean() > 0.3


def test_answers_are_true_of_the_scene(samples):
    kinds = Counter()
    for s in samples:
        q, objs = s.question, s.scene.objects
        kinds[q.kind] += 1
        assert q.answer in sv.VOCABULARY[q.kind]
        if q.kind == "count":
            assert q.answer == str(len(objs))
        elif q.kind == "color":
            shape = q.question.split("the ")[1].split("?")[0]
            (match,) = [o for o in objs if o.shape == shape]
            assert q.answer == match.color
        elif q.kind == "shape":
            color = q.question.split("the ")[1].split(" object")[0]
            (match,) = [o for o in objs if o.color == color]
            assert q.answer == match.shape
        elif q.kind == "count_color":
            color = q.question.split("many ")[1].split(" shapes")[0]
            assert q.answer == str(sum(o.color == color for o in objs))
        elif q.kind == "position":
            color, shape = q.question.split("the ")[1].rstrip("?").split("?")[0].split(" ")
            (match,) = [o for o in objs if (o.color, o.shape) == (color, shape)]
            assert q.answer == match.position
        elif q.kind == "exists":
            color, shape = q.question.split("a ")[1].split("?")[0].split(" ")
            assert q.answer == (
                "yes" if any((o.color, o.shape) == (color, shape) for o in objs) else "no"
            )
    assert set(kinds) == set(sv.KINDS) and min(kinds.values()) > 40


@pytest.mark.parametrize(
    "prediction, expected, kind, correct",
    [
        ("Red.", "red", "color", True),
        ("The circle", "circle", "shape", True),
        ("three", "3", "count", True),
        ("There are 3 shapes.", "3", "count", True),
        ("zero", "0", "count_color", True),
        ("It is at the top left.", "top left", "position", True),
        ("top", "top left", "position", False),
        ("top left and bottom", "top left", "position", False),
        ("red or blue", "red", "color", False),
        ("Yes, there is.", "yes", "exists", True),
        ("an orange", "orange", "color", True),
        ("blue", "red", "color", False),
    ],
)
def test_scoring_rule(prediction, expected, kind, correct):
    assert sv.is_correct(prediction, expected, kind) is correct
