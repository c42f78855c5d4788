"""The tiny world: a deterministic synthetic "internet", contractor demonstrations, prompts and a gold labeler.

No weights or datasets can be downloaded at run or test time, so the default recipe brings its own world. It is
small enough for a ~1M-parameter model to learn on two CPU cores in a couple of minutes, and built so that every
stage of the seed's pipeline moves the numbers:

* The world is a table of facts: each animal has a color, a food and a home (16 x 3 = 48 facts).
* **Documents** ("raw internet") are encyclopedia entries and stories that state the facts, quiz pages that are
  nothing but lists of questions, and forum threads of questions with answers of very mixed quality. A base model
  asked a question therefore tends to continue the document with more questions (quiz pages), while a few-shot
  "fake document" prompt in the forum format coaxes it into answering, with the quality of an average forum answer.
* **Demonstrations** are written by simulated contractors in the assistant format. Most are ideal answers
  ("The fox is red."), but, like real contractors, some are terse, rambling, hedged or wrong. The SFT model imitates
  that spectrum of qualities (the seed: "LLMs don't want to succeed, they imitate training sets with a spectrum of
  performance qualities"), so sampling from it leaves headroom that best-of-N and RL can take.
* The **gold labeler** scores any (prompt, response) in [0, 1] by the rubric the contractors follow: correct and
  unhedged fact (0.5), answers in a sentence about the asked animal (0.2), one short complete sentence (0.2), and no
  question thrown back at the user (0.1).

Everything is a pure function of a seed; datasets are `datasets.Dataset` objects.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from dataclasses import dataclass, field

ANIMALS = [
    "fox", "cat", "dog", "owl", "frog", "bear", "wolf", "duck",
    "goat", "seal", "crab", "deer", "mole", "hawk", "lynx", "toad",
]  # fmt: skip
VALUES = {
    "color": ["red", "blue", "green", "yellow", "black", "white", "brown", "gray"],
    "food": ["fish", "seeds", "grass", "bugs", "berries", "nuts", "leaves", "worms"],
    "home": ["forest", "river", "cave", "hill", "lake", "field", "desert", "swamp"],
}
ATTRIBUTES = list(VALUES)

# Several phrasings of each question; prompts combine one with an optional opener, so the held-out prompts are
# strings the SFT model never saw, about facts it learned in pretraining.
QUESTIONS = {
    "color": [
        "What color is the {a}?",
        "What is the color of the {a}?",
        "Which color does the {a} have?",
        "Tell me the color of the {a}.",
    ],
    "food": [
        "What does the {a} eat?",
        "What food does the {a} like?",
        "What is the food of the {a}?",
        "Tell me what the {a} eats.",
    ],
    "home": [
        "Where does the {a} live?",
        "What is the home of the {a}?",
        "Where is the {a} found?",
        "Tell me where the {a} lives.",
    ],
}
OPENERS = ["", "Hi! ", "Please help. ", "Quick question: "]

IDEAL = {"color": "The {a} is {v}.", "food": "The {a} eats {v}.", "home": "The {a} lives in the {v}."}


@dataclass(frozen=True)
class Prompt:
    """A question about one fact of the world."""

    text: str
    animal: str
    attribute: str


@dataclass
class TinyWorld:
    """The facts of one seeded world and the generators built on them.

    Args:
        seed (`int`): Seed of the fact table and of every generator.
    """

    seed: int = 0
    facts: dict[str, dict[str, str]] = field(init=False)

    def __post_init__(self):
        rng = random.Random(self.seed)
        self.facts = {a: {attr: rng.choice(VALUES[attr]) for attr in ATTRIBUTES} for a in ANIMALS}

    # ----------------------------------------------------------------------------------------------- prompts
    def all_prompts(self) -> list[Prompt]:
        """Every question the world can ask, in a fixed order."""
        return [
            Prompt(opener + template.format(a=animal), animal, attribute)
            for animal in ANIMALS
            for attribute in ATTRIBUTES
            for template in QUESTIONS[attribute]
            for opener in OPENERS
        ]

    def split_prompts(self, num_eval: int) -> tuple[list[Prompt], list[Prompt]]:
        """Split the prompt strings into (train, held-out eval); the split depends only on the seed."""
        prompts = self.all_prompts()
        random.Random(self.seed + 1).shuffle(prompts)
        if not 0 < num_eval < len(prompts):
            raise ValueError(f"num_eval_prompts must be between 1 and {len(prompts) - 1}, got {num_eval}")
        return prompts[num_eval:], prompts[:num_eval]

    def find_prompt(self, text: str) -> Prompt:
        """Recover the (animal, attribute) a question asks about, from its text (for the gold labeler)."""
        lowered = text.lower()
        animal = next((a for a in ANIMALS if re.search(rf"\b{a}\b", lowered)), None)
        if "color" in lowered:
            attribute = "color"
        elif "eat" in lowered or "food" in lowered:
            attribute = "food"
        elif "live" in lowered or "home" in lowered or "found" in lowered:
            attribute = "home"
        else:
            attribute = None
        if animal is None or attribute is None:
            raise ValueError(f"Not a question of the tiny world: {text!r}")
        return Prompt(text, animal, attribute)

    # ------------------------------------------------------------------------------------------- responses
    def ideal_answer(self, prompt: Prompt) -> str:
        return IDEAL[prompt.attribute].format(a=prompt.animal, v=self.facts[prompt.animal][prompt.attribute])

    def _styled_answer(self, prompt: Prompt, style: str, rng: random.Random) -> str:
        value = self.facts[prompt.animal][prompt.attribute]
        others = [v for v in VALUES[prompt.attribute] if v != value]
        if style == "ideal":
            return self.ideal_answer(prompt)
        if style == "terse":
            return value
        if style == "rambling":
            other_animal = rng.choice([a for a in ANIMALS if a != prompt.animal])
            extra = IDEAL[prompt.attribute].format(a=other_animal, v=self.facts[other_animal][prompt.attribute])
            return f"Well, t{self.ideal_answer(prompt)[1:]} Also, t{extra[1:]} I like animals a lot."
        if style == "hedged":
            pair = [value, rng.choice(others)]
            rng.shuffle(pair)
            return IDEAL[prompt.attribute].format(a=prompt.animal, v=f"{pair[0]} or {pair[1]}") + " Not sure."
        if style == "wrong":
            return IDEAL[prompt.attribute].format(a=prompt.animal, v=rng.choice(others))
        if style == "deflect":
            return rng.choice(["why do you ask?", "idk, who knows?", "Is that a quiz?"])
        raise ValueError(f"unknown answer style {style!r}")

    def _answer(self, prompt: Prompt, mix: dict[str, float], rng: random.Random) -> str:
        style = rng.choices(list(mix), weights=list(mix.values()))[0]
        return self._styled_answer(prompt, style, rng)

    # -------------------------------------------------------------------------------------------- datasets
    # Contractors mostly write ideal answers; forum posters much less so.
    CONTRACTOR_MIX = {"ideal": 0.55, "terse": 0.15, "rambling": 0.12, "hedged": 0.1, "wrong": 0.08}
    FORUM_MIX = {"ideal": 0.25, "terse": 0.2, "rambling": 0.15, "hedged": 0.1, "wrong": 0.1, "deflect": 0.2}

    def documents(self, num_documents: int, seed: int | None = None) -> list[str]:
        """Raw "internet" documents: encyclopedia entries, stories, quiz pages and forum threads."""
        rng = random.Random(self.seed if seed is None else seed)
        kinds = ["encyclopedia", "story", "quiz", "forum"]
        docs = []
        for _ in range(num_documents):
            kind = rng.choices(kinds, weights=[0.35, 0.15, 0.25, 0.25])[0]
            docs.append(getattr(self, f"_{kind}_document")(rng))
        return docs

    def _encyclopedia_document(self, rng: random.Random) -> str:
        animal = rng.choice(ANIMALS)
        sentences = [IDEAL[attr].format(a=animal, v=self.facts[animal][attr]) for attr in ATTRIBUTES]
        rng.shuffle(sentences)
        filler = rng.choice(["Many people like the {a}.", "The {a} is an animal.", "The {a} sleeps at night."])
        sentences.insert(rng.randrange(len(sentences) + 1), filler.format(a=animal))
        return f"About the {animal}. " + " ".join(sentences)

    def _story_document(self, rng: random.Random) -> str:
        animal = rng.choice(ANIMALS)
        f = self.facts[animal]
        return (
            f"One day the {f['color']} {animal} left the {f['home']}. "
            f"It was hungry, so the {animal} ate some {f['food']}. Then the {animal} went home to the {f['home']}."
        )

    def _quiz_document(self, rng: random.Random) -> str:
        questions = [
            rng.choice(QUESTIONS[attr]).format(a=rng.choice(ANIMALS))
            for attr in rng.choices(ATTRIBUTES, k=rng.randint(3, 6))
        ]
        return rng.choice(["Quiz time!", "Animal quiz.", "Questions for class."]) + "\n" + "\n".join(questions)

    def _forum_document(self, rng: random.Random) -> str:
        posts = []
        for _ in range(rng.randint(2, 4)):
            animal, attribute = rng.choice(ANIMALS), rng.choice(ATTRIBUTES)
            prompt = Prompt(rng.choice(QUESTIONS[attribute]).format(a=animal), animal, attribute)
            posts.append(f"Q: {prompt.text}\nA: {self._answer(prompt, self.FORUM_MIX, rng)}")
        return "\n\n".join(posts)

    def demonstrations(self, prompts: list[Prompt], num: int, seed: int | None = None) -> list[dict]:
        """Contractor demonstrations in TRL's prompt-completion format: `prompt` and `completion` strings."""
        rng = random.Random((self.seed if seed is None else seed) + 2)
        rows = []
        for _ in range(num):
            prompt = rng.choice(prompts)
            rows.append({"prompt": prompt.text, "completion": self._answer(prompt, self.CONTRACTOR_MIX, rng)})
        return rows

    def few_shot_prefix(self, exclude_animal: str, rng: random.Random, shots: int = 3) -> str:
        """A "fake document" in the forum format with ideal answers, to coax a base model into answering."""
        lines = []
        for animal in rng.sample([a for a in ANIMALS if a != exclude_animal], shots):
            attribute = rng.choice(ATTRIBUTES)
            prompt = Prompt(QUESTIONS[attribute][0].format(a=animal), animal, attribute)
            lines.append(f"Q: {prompt.text}\nA: {self.ideal_answer(prompt)}")
        return "\n\n".join(lines) + "\n\nQ: "

    # ------------------------------------------------------------------------------------------ gold labeler
    def gold_score(self, prompt: str, response: str) -> float:
        """Score a response as the contractors' rubric would, in [0, 1].

        Rubric: 0.5 for stating the right value and no other value of that kind (0.2 if hedged between the right
        one and others), 0.2 for a sentence about the asked animal, 0.2 for one short complete sentence
        (at most 10 words, ending with a period), 0.1 for not throwing a question back at the user. A response that
        names neither the animal nor any value of the asked kind is off topic and scores 0.
        """
        p = self.find_prompt(prompt)
        lowered = response.lower()
        words = re.findall(r"[a-z]+", lowered)
        right = self.facts[p.animal][p.attribute]
        mentioned = {w for w in words if w in VALUES[p.attribute]}
        about_animal = re.search(rf"\bthe {p.animal}\b", lowered) is not None
        if not mentioned and not about_animal:
            return 0.0  # off topic: nothing else in the rubric applies
        score = 0.0
        if mentioned == {right}:
            score += 0.5
        elif right in mentioned:
            score += 0.2
        if about_animal:
            score += 0.2
        stripped = response.strip()
        sentences = [s for s in re.split(r"[.!?]+", stripped) if s.strip()]
        if stripped.endswith(".") and len(sentences) == 1 and len(words) <= 10:
            score += 0.2
        if "?" not in response:
            score += 0.1
        return round(score, 4)

    def gold_scores(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Batch form `f(prompts, completions) -> list[float]`, the signature reward functions use."""
        return [self.gold_score(p, c) for p, c in zip(prompts, completions, strict=True)]


@functools.cache
def _world_questions() -> frozenset[str]:
    return frozenset(p.text for p in TinyWorld(0).all_prompts())  # the phrasings do not depend on the seed


def is_world_question(prompt: str | list[dict]) -> bool:
    """Whether a prompt (text, or a conversation: its last message) is one of the world's questions, the prompts
    the gold labeler can score. Other prompts are outside the world, whatever animals they mention."""
    text = prompt[-1].get("content") if isinstance(prompt, list) and prompt else prompt
    return isinstance(text, str) and text.strip() in _world_questions()


# The tiny world's datasets, the one table of them: what each is (`about`, printed by the dry run), its columns and
# splits (the dry run checks a stage's format against them), and its dataset card's description (`hf_rlhf.hub.cards`).
WORLD_DATASETS: dict[str, dict] = {
    "documents": {
        "about": "the tiny world's raw documents",
        "columns": ["text"],
        "splits": ["train", "test"],
        "card": "The tiny world's raw documents (the pretraining corpus): encyclopedia entries and stories stating the "
        "facts of 16 animals, quiz pages, and forum threads with answers from ideal to wrong.",
    },
    "demonstrations": {
        "about": "the tiny world's contractor demonstrations (conversational prompt-completion)",
        "columns": ["prompt", "completion"],
        "splits": ["train", "test"],
        "card": "The tiny world's contractor demonstrations for SFT, in TRL's conversational prompt-completion "
        "format: mostly ideal answers, some terse, rambling, hedged or wrong, as real contractors write.",
    },
    "prompts": {
        "about": "the tiny world's questions (conversational prompt-only)",
        "columns": ["prompt"],
        "splits": ["train", "test"],
        "prompt_tokens": 24,  # an upper bound of a question's length in tokens: sizes RL rollouts
        "card": "The tiny world's questions in TRL's prompt-only format: `train` for RL and comparison sampling, "
        "`test` held out (never in a demonstration) for evaluation.",
    },
}


def build_world_datasets(args) -> dict[str, str]:
    """Generate the tiny world's datasets and save them under `args.output_dir` (a `WorldArguments`).

    Writes `documents/` (`text`), `demonstrations/` (conversational prompt-completion), `prompts/` (prompt-only,
    split `train` for RL and `test` held out for evaluation) and `world.json` (seed and fact table).

    Returns:
        `dict[str, str]`: dataset name to directory.
    """
    from dataclasses import asdict

    from datasets import Dataset, DatasetDict

    from ..manifest import atomic_write_json

    world = TinyWorld(args.seed)
    train_prompts, eval_prompts = world.split_prompts(args.num_eval_prompts)

    def split(rows: list[dict]) -> DatasetDict:
        n_test = max(1, int(len(rows) * args.test_fraction))
        return DatasetDict(train=Dataset.from_list(rows[n_test:]), test=Dataset.from_list(rows[:n_test]))

    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    datasets = {
        "documents": split([{"text": d} for d in world.documents(args.num_documents)]),
        "demonstrations": split(
            [
                {"prompt": user(d["prompt"]), "completion": [{"role": "assistant", "content": d["completion"]}]}
                for d in world.demonstrations(train_prompts, args.num_demonstrations)
            ]
        ),
        "prompts": DatasetDict(
            train=Dataset.from_list([{"prompt": user(p.text)} for p in train_prompts]),
            test=Dataset.from_list([{"prompt": user(p.text)} for p in eval_prompts]),
        ),
    }
    paths = {}
    for name, dataset in datasets.items():
        paths[name] = os.path.join(args.output_dir, name)
        dataset.save_to_disk(paths[name])
    # Written last: a world directory without world.json is incomplete and gets regenerated.
    atomic_write_json(os.path.join(args.output_dir, "world.json"), {"seed": args.seed, "facts": world.facts, "args": asdict(args)})
    return paths


def read_world(directory: str) -> dict | None:
    """The `world.json` of a generated world directory, or None if there is none (or it is unfinished)."""
    path = os.path.join(directory, "world.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> dict[str, str]:
    """`hf-rlhf world`: generate the tiny world's datasets."""
    from transformers import HfArgumentParser

    from ..configs import WorldArguments

    (args,) = HfArgumentParser(WorldArguments, prog="hf-rlhf world").parse_args_into_dataclasses(argv)
    paths = build_world_datasets(args)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths
