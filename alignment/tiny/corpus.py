"""A seeded generator of short movie reviews of mixed sentiment, and the prompts that ask for them.

The reviews are built from phrase lists so that tone varies review by review: a model trained
on them writes positive, negative and mixed reviews, which leaves alignment something to do
(the gold judge, VADER, prefers positive ones).
"""

from __future__ import annotations

import random

TITLE_WORDS_A = [
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Midnight", "Frozen", "Wild", "Distant",
    "Burning", "Quiet", "Lost", "Electric", "Paper", "Iron", "Velvet", "Hollow", "Bright", "Northern",
    "Secret", "Endless", "Little", "Restless",
]
TITLE_WORDS_B = [
    "Harbor", "Garden", "Signal", "Kingdom", "River", "Promise", "Machine", "Summer", "Road", "Mirror",
    "Island", "Letter", "Valley", "Station", "Winter", "Crown", "Orchard", "Engine", "Lantern", "Frontier",
    "Circus", "Tide", "Canyon", "Echo",
]
GENRES = ["drama", "comedy", "thriller", "western", "romance", "science fiction film", "horror film",
          "documentary", "musical", "animated film", "mystery", "war film"]
PROMPT_FORMS = [
    'Write a review of the {genre} "{title}".',
    'Review the movie "{title}".',
    'What did you think of "{title}"?',
    'Write a short review of "{title}", a {genre}.',
    'Give your opinion of the {genre} "{title}".',
]

OPENERS = {
    "pos": ["{title} is a wonderful {genre}.", "I loved {title}.", "{title} is a delightful surprise.",
            "What a beautiful {genre} {title} is.", "{title} is one of the best films of the year."],
    "neg": ["{title} is a terrible {genre}.", "I hated {title}.", "{title} is a boring mess.",
            "What a disappointing {genre} {title} is.", "{title} is one of the worst films of the year."],
    "neu": ["I watched {title} last weekend.", "{title} is a {genre} about a family.",
            "I saw {title} with my friends.", "{title} runs for about two hours.", "{title} is a {genre} set in a small town."],
}
ASPECTS = ["acting", "story", "music", "camera work", "ending", "dialogue", "cast", "script", "pacing", "soundtrack"]
ASPECT_VERDICTS = {
    "pos": ["is brilliant", "is superb", "is warm and funny", "is moving", "is excellent", "is clever and fresh",
            "is a joy", "is wonderful", "feels honest and strong", "is great"],
    "neg": ["is awful", "is dull", "is weak and lazy", "is painful", "is a disaster", "is stupid and stale",
            "is a chore", "is terrible", "feels fake and empty", "is bad"],
    "neu": ["is simple", "is long", "is typical for the genre", "is quiet", "is slow at times", "is very plain"],
}
CLOSERS = {
    "pos": ["I would happily watch it again.", "Highly recommended.", "A great night at the movies.",
            "I left the theater smiling.", "Do not miss it."],
    "neg": ["I would never watch it again.", "Avoid this one.", "A waste of time and money.",
            "I left the theater angry.", "Skip it."],
    "neu": ["It is what it is.", "Some people will like it.", "Make up your own mind.", "It ends as you expect."],
}
TONES = {  # share of sentences of each polarity, per review tone
    "positive": {"pos": 0.85, "neg": 0.05, "neu": 0.10},
    "negative": {"pos": 0.05, "neg": 0.85, "neu": 0.10},
    "mixed": {"pos": 0.40, "neg": 0.40, "neu": 0.20},
}


def all_titles() -> list[str]:
    return [f"The {a} {b}" if i % 3 == 0 else f"{a} {b}"
            for i, (a, b) in enumerate((a, b) for a in TITLE_WORDS_A for b in TITLE_WORDS_B)]


def make_prompt(rng: random.Random, title: str, genre: str) -> str:
    return rng.choice(PROMPT_FORMS).format(title=title, genre=genre)


def make_review(rng: random.Random, title: str, genre: str, tone: str) -> str:
    weights = TONES[tone]
    polarities, shares = zip(*weights.items())

    def pick() -> str:
        return rng.choices(polarities, shares)[0]

    sentences = [rng.choice(OPENERS[pick()]).format(title=title, genre=genre)]
    for aspect in rng.sample(ASPECTS, rng.randint(1, 3)):
        sentences.append(f"The {aspect} {rng.choice(ASPECT_VERDICTS[pick()])}.")
    sentences.append(rng.choice(CLOSERS[pick()]))
    return " ".join(sentences)


def split_titles(seed: int, held_out_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Titles for training and held-out prompts: disjoint, so held-out prompts are unseen."""
    titles = all_titles()
    random.Random(seed).shuffle(titles)
    cut = int(len(titles) * (1 - held_out_fraction))
    return titles[:cut], titles[cut:]


def make_sft_rows(seed: int, titles: list[str], count: int) -> list[dict]:
    """Chat rows {messages: [user prompt, assistant review]} with tones drawn uniformly."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        title, genre, tone = rng.choice(titles), rng.choice(GENRES), rng.choice(list(TONES))
        rows.append({"messages": [
            {"role": "user", "content": make_prompt(rng, title, genre)},
            {"role": "assistant", "content": make_review(rng, title, genre, tone)},
        ]})
    return rows


def make_prompt_rows(seed: int, titles: list[str]) -> list[dict]:
    """One prompt per title: {prompt: [user message]} in TRL's conversational prompt format."""
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": make_prompt(rng, title, rng.choice(GENRES))}]} for title in titles]
