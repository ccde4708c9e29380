"""The seeded synthetic sentiment set: product-review sentences with negation, intensifiers and
contrast clauses ("X, but Y"), so that a bag of words is not enough to get every one right."""

from __future__ import annotations

import random

from peft_tui.errors import ConfigError

ASPECTS = [
    "battery", "screen", "camera", "keyboard", "speaker", "design", "price", "software", "delivery",
    "support team", "build quality", "touchpad", "charger", "packaging", "sound", "interface", "display",
    "hinge", "app", "manual", "fan", "webcam", "microphone", "case", "remote",
]
POSITIVE = [
    "good", "great", "excellent", "superb", "reliable", "pleasant", "impressive", "enjoyable", "solid",
    "fantastic", "wonderful", "decent", "brilliant", "sturdy", "responsive", "lovely", "polished",
]
NEGATIVE = [
    "bad", "terrible", "awful", "poor", "disappointing", "flimsy", "sluggish", "unreliable", "mediocre",
    "annoying", "dreadful", "useless", "clunky", "noisy", "frustrating", "cheap", "broken",
]
INTENSIFIERS = ["very", "really", "extremely", "quite", "remarkably", "truly", "rather", "incredibly", "so"]
NEGATORS = ["not", "hardly", "never", "far from", "not at all", "by no means", "anything but", "not exactly"]
VERBS = ["is", "was", "seems", "feels", "looks", "turned out", "has been"]
OPENERS = ["", "", "", "to be honest, ", "after a week of use, ", "in my experience, ", "frankly, ", "well, "]
TRAILERS = ["", "", "", " overall", " in my opinion", " for the price", " to be fair", " most days", " so far"]


def _clause(rng: random.Random, polarity: int, noise_tail: bool = True) -> str:
    """One clause about an aspect whose sentiment is `polarity` (+1 / -1)."""
    negate = rng.random() < 0.3
    adj_pol = -polarity if negate else polarity
    adj = rng.choice(POSITIVE if adj_pol > 0 else NEGATIVE)
    words = []
    if negate:
        words.append(rng.choice(NEGATORS))
    if rng.random() < 0.45:
        words.append(rng.choice(INTENSIFIERS))
    words.append(adj)
    aspect = rng.choice(ASPECTS)
    verb = rng.choice(VERBS)
    if rng.random() < 0.2:
        text = f"I found the {aspect} {' '.join(words)}"
    else:
        text = f"the {aspect} {verb} {' '.join(words)}"
    if noise_tail:
        text += rng.choice(TRAILERS)
    return text


def _sentence(rng: random.Random, label: int) -> str:
    """A sentence whose overall sentiment is `label` (1 positive, 0 negative)."""
    pol = 1 if label == 1 else -1
    kind = rng.random()
    if kind < 0.45:  # one clause
        body = _clause(rng, pol)
    elif kind < 0.6:  # two agreeing clauses
        body = f"{_clause(rng, pol)} and {_clause(rng, pol)}"
    elif kind < 0.75:  # contrast: the clause after "but"/"yet" decides
        conj = rng.choice(["but", "yet", "however", "though in the end"])
        body = f"{_clause(rng, -pol)}, {conj} {_clause(rng, pol)}"
    elif kind < 0.9:  # concession first: the main clause decides
        conj = rng.choice(["although", "even though", "despite the fact that", "while"])
        body = f"{conj} {_clause(rng, -pol)}, {_clause(rng, pol)}"
    else:  # concession second: the first clause decides
        conj = rng.choice(["although", "even though", "despite the fact that"])
        body = f"{_clause(rng, pol)}, {conj} {_clause(rng, -pol)}"
    return (rng.choice(OPENERS) + body + rng.choice([".", ".", "!"])).capitalize()


def synthetic(size: int, seed: int, label_noise: float = 0.0) -> tuple[list[str], list[int]]:
    """`size` unique sentences, exactly balanced, deterministic for a seed."""
    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    attempts = 0
    while len(texts) < size:
        attempts += 1
        if attempts > size * 50:
            raise ConfigError(f"could not make {size} unique synthetic sentences: use a smaller size")
        label = len(texts) % 2
        s = _sentence(rng, label)
        if s in seen:
            continue
        seen.add(s)
        texts.append(s)
        labels.append(label)
    order = list(range(size))
    rng.shuffle(order)
    texts, labels = [texts[i] for i in order], [labels[i] for i in order]
    if label_noise > 0:  # its own generator: the same sentences with and without noise
        for i in random.Random(seed + 1).sample(range(size), round(size * label_noise)):
            labels[i] = 1 - labels[i]
    return texts, labels
