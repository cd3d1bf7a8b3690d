"""Shapes-VQA (../shared/spec/shapes-vqa.md): scenes, questions, answers and the scoring rule.

Torch-free: the training command, the ``eval`` command and the tests share it.
Everything the spec leaves free is randomized (image side, anti-aliasing,
rotation, the star's inner radius, color jitter, placement) so that the model
learns the domain rather than one renderer. A sample is a pure function of
``(split seed, index)``: the same split always gives the same images and
questions, and train and held-out come from different seeds.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

BACKGROUNDS = {"white": (255, 255, 255), "light gray": (211, 211, 211), "dark gray": (64, 64, 64)}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
COLORS = {
    "red": (230, 25, 25),
    "green": (30, 170, 60),
    "blue": (30, 80, 220),
    "yellow": (245, 210, 20),
    "orange": (245, 130, 20),
    "purple": (140, 50, 200),
    "pink": (245, 120, 190),
    "brown": (130, 80, 40),
}
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITION_NAMES = tuple(name for row in POSITIONS for name in row)
KINDS = ("color", "shape", "count", "count_color", "position", "exists")
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
VOCABULARY = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "count": ("1", "2", "3", "4", "5"),
    "count_color": ("0", "1", "2", "3", "4", "5"),
    "position": POSITION_NAMES,
    "exists": ("yes", "no"),
}
SHORT_ANSWER_SUFFIX = " Answer with a single word or phrase."
SPLIT_SEEDS = {"train": 20261121, "heldout": 7_000_001}

MIN_SIDE, MAX_SIDE = 224, 1024
MIN_SIZE, MAX_SIZE = 0.12, 0.30  # object bounding-box side / image side
MAX_ROTATION = 15.0
COLOR_JITTER = 12
SUPERSAMPLE = 4


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    cx: float  # centre, as a fraction of the image side
    cy: float
    size: float  # bounding-box side, as a fraction of the image side
    rotation: float  # degrees
    inner: float = 0.45  # the star's inner/outer radius ratio

    @property
    def position(self) -> str:
        return POSITIONS[min(int(self.cy * 3), 2)][min(int(self.cx * 3), 2)]


@dataclass(frozen=True)
class Scene:
    side: int
    background: str
    objects: tuple[SceneObject, ...]
    antialias: tuple[bool, ...]  # per object


@dataclass(frozen=True)
class Question:
    kind: str
    question: str
    answer: str


@dataclass(frozen=True)
class Sample:
    index: int
    scene: Scene
    question: Question

    def image(self) -> Image.Image:
        return render(self.scene)


def _unit_polygon(shape: str, inner: float) -> np.ndarray:
    """Vertices (N, 2) of an upright shape around the origin, y pointing down."""
    if shape == "square":
        angles, radii = np.radians([45, 135, 225, 315]), np.ones(4)
    elif shape == "triangle":
        angles, radii = np.radians([-90, 30, 150]), np.ones(3)
    elif shape == "hexagon":
        angles, radii = np.radians(np.arange(6) * 60.0), np.ones(6)
    elif shape == "star":
        angles = np.radians(-90 + np.arange(10) * 36.0)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    else:
        raise ValueError(shape)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def object_polygon(obj: SceneObject, side: float) -> np.ndarray:
    """Pixel vertices of a polygonal object, rotated, scaled so its bounding box side is
    ``obj.size * side`` (the larger of width and height) and centred on the object's centre."""
    points = _unit_polygon(obj.shape, obj.inner)
    t = math.radians(obj.rotation)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    points = points @ rot.T
    lo, hi = points.min(axis=0), points.max(axis=0)
    scale = obj.size * side / float((hi - lo).max())
    points = (points - (lo + hi) / 2) * scale
    return points + np.array([obj.cx * side, obj.cy * side])


def _draw(
    draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, fill, origin=(0, 0), scale: int = 1
) -> None:
    """Draw ``obj`` of a ``side``-pixel scene into a canvas whose pixel (0, 0) is the scene's
    ``origin`` and which is ``scale`` times finer."""
    ox, oy = origin
    if obj.shape == "circle":
        r = obj.size * side / 2
        x, y = obj.cx * side, obj.cy * side
        box = [
            (x - r - ox) * scale,
            (y - r - oy) * scale,
            (x + r - ox) * scale,
            (y + r - oy) * scale,
        ]
        draw.ellipse(box, fill=fill)
    else:
        points = (object_polygon(obj, side) - np.array([ox, oy])) * scale
        draw.polygon([tuple(p) for p in points], fill=fill)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.side`` pixels; anti-aliased objects are drawn
    4x finer into a coverage mask of their neighbourhood and blended into place."""
    side = scene.side
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj, smooth in zip(scene.objects, scene.antialias, strict=True):
        if not smooth:
            _draw(draw, obj, side, obj.rgb)
            continue
        half = obj.size * side * 0.75 + 2
        x0, y0 = (max(int(c * side - half), 0) for c in (obj.cx, obj.cy))
        x1, y1 = (min(int(c * side + half) + 1, side) for c in (obj.cx, obj.cy))
        mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
        _draw(ImageDraw.Draw(mask), obj, side, 255, (x0, y0), SUPERSAMPLE)
        mask = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
        image.paste(obj.rgb, (x0, y0, x1, y1), mask)
    return image


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene drawn from the spec's distribution."""
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.integers(1, 6))
    objects: list[SceneObject] = []
    boxes: list[tuple[float, float, float]] = []
    while len(objects) < count:
        for _ in range(200):
            size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
            margin = size / 2 + 1.5 / side
            cx, cy = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
            gap = 0.01
            if all(
                abs(cx - bx) > (size + bs) / 2 + gap or abs(cy - by) > (size + bs) / 2 + gap
                for bx, by, bs in boxes
            ):
                break
        else:  # crowded: start over with fewer, smaller chances
            objects, boxes = [], []
            count = max(1, count - 1)
            continue
        shape = str(rng.choice(SHAPES))
        color = str(rng.choice(list(COLORS)))
        base = np.array(COLORS[color])
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-12, 13, size=3), 0, 255))
        rotation = 0.0 if shape == "circle" else float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        inner = float(rng.uniform(0.38, 0.5))
        objects.append(SceneObject(shape, color, rgb, cx, cy, size, rotation, inner))
        boxes.append((cx, cy, size))
    antialias = tuple(bool(rng.random() < 0.5) for _ in objects)
    return Scene(side, background, tuple(objects), antialias)


def _phrase(text: str, rng: np.random.Generator, suffix_rate: float) -> str:
    return text + SHORT_ANSWER_SUFFIX if rng.random() < suffix_rate else text


def _pick_unique(objs, key, rng: np.random.Generator) -> SceneObject | None:
    """A random object whose ``key`` no other object shares; None when there is none."""
    counts = Counter(key(o) for o in objs)
    unique = [o for o in objs if counts[key(o)] == 1]
    return unique[rng.integers(len(unique))] if unique else None


def ask(
    scene: Scene, kind: str, rng: np.random.Generator, suffix_rate: float = 0.5
) -> Question | None:
    """A question of ``kind`` about ``scene``; None when the scene allows none of that kind."""
    objs = scene.objects
    shapes = Counter(o.shape for o in objs)
    colors = Counter(o.color for o in objs)
    if kind == "color":
        if (o := _pick_unique(objs, lambda o: o.shape, rng)) is None:
            return None
        return Question(kind, _phrase(f"What color is the {o.shape}?", rng, suffix_rate), o.color)
    if kind == "shape":
        if (o := _pick_unique(objs, lambda o: o.color, rng)) is None:
            return None
        q = f"What shape is the {o.color} object?"
        return Question(kind, _phrase(q, rng, suffix_rate), o.shape)
    if kind == "count":
        q = "How many shapes are there?"
        return Question(kind, _phrase(q, rng, suffix_rate), str(len(objs)))
    if kind == "count_color":
        if rng.random() < 0.7:
            color = objs[rng.integers(len(objs))].color
        else:
            color = str(rng.choice(list(COLORS)))
        q = f"How many {color} shapes are there?"
        return Question(kind, _phrase(q, rng, suffix_rate), str(colors[color]))
    if kind == "position":
        if (o := _pick_unique(objs, lambda o: (o.color, o.shape), rng)) is None:
            return None
        q = f"Where is the {o.color} {o.shape}?"
        return Question(kind, _phrase(q, rng, suffix_rate), o.position)
    if kind == "exists":
        if rng.random() < 0.5:
            o = objs[rng.integers(len(objs))]
            color, shape, answer = o.color, o.shape, "yes"
        else:
            pairs = {(o.color, o.shape) for o in objs}
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in pairs]
            # prefer near misses: the color or the shape is in the scene
            near = [(c, s) for c, s in absent if c in colors or s in shapes]
            pool = near if near and rng.random() < 0.8 else absent
            color, shape = pool[rng.integers(len(pool))]
            answer = "no"
        q = f"Is there a {color} {shape}?"
        return Question(kind, _phrase(q, rng, suffix_rate), answer)
    raise ValueError(f"unknown question kind {kind!r}")


def describe(scene: Scene) -> str:
    """Every object, left to right in reading order: a dense caption used as a training aid."""
    objs = sorted(scene.objects, key=lambda o: (min(int(o.cy * 3), 2), o.cx))
    return ", ".join(f"{o.color} {o.shape} {o.position}" for o in objs) + "."


def random_question(
    scene: Scene, rng: np.random.Generator, kinds: tuple[str, ...] = KINDS
) -> Question:
    """A question of a uniformly drawn kind that the scene allows (count always does)."""
    while True:
        question = ask(scene, str(rng.choice(kinds)), rng)
        if question is not None:
            return question


def sample(split: str, index: int, kinds: tuple[str, ...] = KINDS) -> Sample:
    """The ``index``-th sample of a split: a pure function of (split, index)."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    scene = random_scene(rng)
    return Sample(index, scene, random_question(scene, rng, kinds))


def normalize(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def _mentions(text: str, vocabulary: tuple[str, ...]) -> set[str]:
    """Vocabulary entries named in ``text``, longest first so "top left" is not also "top"."""
    found, rest = set(), f" {text} "
    for entry in sorted(vocabulary, key=len, reverse=True):
        if f" {entry} " in rest:
            found.add(entry)
            rest = rest.replace(f" {entry} ", " | ")
    return found


def is_correct(prediction: str, expected: str, kind: str) -> bool:
    """The spec's scoring rule."""
    pred = normalize(prediction)
    if pred == expected:
        return True
    return _mentions(pred, VOCABULARY[kind]) == {expected}
