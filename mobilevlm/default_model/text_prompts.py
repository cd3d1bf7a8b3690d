"""Text-only prompts that keep the default model's language while its LoRA learns Shapes-VQA.

Stage 2 replays SmolLM2's own greedy answers to ``TRAIN_PROMPTS`` (alone, and
as a turn inside image conversations), so the adapter is pulled back to the
base model's behaviour on text. ``CHECK_PROMPTS`` are never trained on: they
measure what is left of the language (the card's table, the tests). Written by
hand for this purpose; topics are general knowledge, short instructions and
definitions, the kind of question an app asks a small chat model.
"""

from __future__ import annotations

_COUNTRIES = (
    "Germany", "Spain", "Japan", "Canada", "Egypt", "Brazil", "Russia", "China", "India",
    "Portugal", "Greece", "Mexico", "Kenya", "Sweden", "Norway", "Poland", "Argentina",
    "Australia", "Turkey", "Ireland", "Austria", "Belgium", "Peru", "Chile", "Cuba",
)  # fmt: skip
_BOOKS = (
    "Hamlet", "Pride and Prejudice", "The Odyssey", "Don Quixote", "War and Peace",
    "Moby-Dick", "The Origin of Species", "A Christmas Carol", "Macbeth", "Frankenstein",
    "Les Miserables", "The Divine Comedy",
)  # fmt: skip
_THINGS = (
    "a volcano", "photosynthesis", "a noun", "gravity", "a triangle", "democracy",
    "an atom", "a rainbow", "a computer", "a library", "a glacier", "a vaccine",
    "a planet", "an ecosystem", "a verb", "electricity", "a desert", "a poem",
)  # fmt: skip
_TOPICS = (
    "the moon", "a forest", "winter", "friendship", "the city at night", "a river",
    "coffee", "a mountain", "music", "the summer", "a cat", "the rain",
)  # fmt: skip
_FACTS = (
    "How many days are there in a week?",
    "How many legs does a spider have?",
    "What is the largest ocean on Earth?",
    "What is the boiling point of water in Celsius?",
    "Which planet is known as the Red Planet?",
    "What do bees make?",
    "What is the chemical symbol for gold?",
    "Who painted the Mona Lisa?",
    "What is the tallest mountain in the world?",
    "What gas do plants absorb from the air?",
    "What is the opposite of hot?",
    "What is 7 times 8?",
    "What is 12 plus 15?",
    "How many minutes are in an hour?",
    "What language is spoken in Brazil?",
    "What is the freezing point of water?",
    "Who was the first person to walk on the moon?",
    "What is the largest animal on Earth?",
    "What is the main ingredient of bread?",
    "Which season comes after spring?",
    "What is the longest river in Africa?",
    "Name three primary colors.",
    "Say hello in Spanish.",
    "Translate 'thank you' into French.",
    "Give me a synonym for happy.",
    "Give me an antonym for fast.",
    "Tell me a fun fact about octopuses.",
    "What should I eat for breakfast?",
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "What is the difference between weather and climate?",
    "Suggest a name for a pet dog.",
    "What are the three states of matter?",
    "How can I improve my sleep?",
    "What does a doctor do?",
    "Count from one to five.",
    "What is the square root of 81?",
    "List three fruits.",
    "Who invented the telephone?",
    "What is the currency of Japan?",
)
_WRITE = (
    "Write one sentence about {}.",
    "Describe {} in a few words.",
)

TRAIN_PROMPTS: tuple[str, ...] = (
    *(f"What is the capital of {c}?" for c in _COUNTRIES),
    *(f"Who wrote {b}?" for b in _BOOKS),
    *(f"What is {t}?" for t in _THINGS),
    *(w.format(t) for w in _WRITE for t in _TOPICS),
    *_FACTS,
)

# never trained on; the first is the issue's own check
CHECK_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "What is the capital of Italy?",
    "Who wrote Romeo and Juliet?",
    "Write one sentence about the sea.",
    "What is the largest planet in the solar system?",
    "How many hours are in a day?",
    "What is a mammal?",
    "Translate 'good morning' into Spanish.",
)
