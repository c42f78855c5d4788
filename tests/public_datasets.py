"""Small local copies of public Hub datasets, in their real layouts: the same folders, file names, file types, dataset
card YAML (`configs:` with `data_files` where the real repo has them), column names and nested types, with a few
deterministic rows of realistic content per split. Tests load them as a folder (`datasets.load_dataset(folder, ...)`)
or upload them to the local Hub server (`upload`) and load them by repo id.

Layouts as read from the repos' cards and file lists (2026): FineWeb-Edu `data/<dump>/000_00000.parquet` and
`sample/<N>BT/000_00000.parquet`; UltraChat 200k and smol-smoltalk `data/<split>-0000i-of-0000n[-<hash>].parquet`;
HH-RLHF one folder per subset with `train.jsonl.gz` / `test.jsonl.gz` and no `configs:` (subsets are `data_dir`s), its
`red-team-attempts/red_team_attempts.jsonl.gz` a gzipped JSON array with other columns; openbmb/UltraFeedback one
JSON-lines file per instruction source at the root, no `configs:` (one `train` split); trl-lib's datasets
`data/<split>-00000-of-00001.parquet`. Only some of the real repos' files are copied (two FineWeb-Edu dumps of ~100).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi

MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))


# ------------------------------------------------------------------------------------------------ writing
def _path(root: str, name: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _parquet(root: str, name: str, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), _path(root, name))


def _jsonl(root: str, name: str, rows: list[dict]) -> None:
    with open(_path(root, name), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _gzip(root: str, name: str, text: str) -> None:
    with open(_path(root, name), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # deterministic
        f.write(text.encode())


def _card(root: str, yaml_header: str, title: str, body: str) -> None:
    with open(_path(root, "README.md"), "w", encoding="utf-8") as f:
        f.write(f"---\n{yaml_header.strip()}\n---\n\n# {title}\n\n{body.strip()}\n")


def _configs(configs: dict[str, dict[str, str]]) -> str:
    """The card's `configs:` block: config name -> {split: path pattern}, in the Hub's own formatting."""
    lines = ["configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    return "\n".join(lines)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _chat(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    """Alternating user / assistant messages (a system message first if given), as `{"content", "role"}` dicts."""
    messages = [{"content": system, "role": "system"}] if system else []
    return messages + [{"content": t, "role": ("user", "assistant")[i % 2]} for i, t in enumerate(turns)]


def repo_files(folder: str) -> list[str]:
    """The data files of a copy (every file but the dataset card), as repo paths, sorted."""
    out = []
    for dirpath, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/") for n in names]
    return sorted(p for p in out if p != "README.md")


def upload(api: HfApi, repo_id: str, folder: str) -> str:
    """Create the dataset repo `repo_id` on the (test) Hub `api` talks to and upload `folder` to it in one commit.

    Returns:
        The commit sha.
    """
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset", commit_message="Upload").oid


# ------------------------------------------------------------------------------------------------ FineWeb-Edu
FINEWEB_EDU_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("id", pa.string()),
        ("dump", pa.string()),
        ("url", pa.string()),
        ("file_path", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("token_count", pa.int64()),
        ("score", pa.float64()),
        ("int_score", pa.int64()),
    ]
)
_EDU = [
    (
        "education.nationalgeographic.org/resource/photosynthesis/",
        "Photosynthesis is the process by which plants, algae and some bacteria turn light energy into chemical energy. Chlorophyll in the chloroplasts absorbs mostly red and blue light, and the energy splits water molecules, releasing oxygen. The plant then uses carbon dioxide from the air to build glucose in the Calvin cycle.",
    ),
    (
        "www.britannica.com/science/plate-tectonics",
        "Plate tectonics explains how the Earth's outer shell is broken into large slabs that move a few centimetres each year. Where plates pull apart, new crust forms at mid-ocean ridges; where they collide, one plate may sink beneath another, building mountain ranges and volcanic arcs.",
    ),
    (
        "www.khanacademy.org/math/fractions/equivalent-fractions",
        "Two fractions are equivalent when they name the same part of a whole. Multiplying the numerator and the denominator by the same number, as in 1/2 = 2/4 = 3/6, gives an equivalent fraction. Students can check their answers by drawing fraction bars of equal length.",
    ),
    (
        "www.history.com/topics/industrial-revolution",
        "The Industrial Revolution began in Britain in the late eighteenth century, when new machines such as the spinning jenny and the steam engine moved production from homes to factories. Cities grew quickly, and working conditions led to the first labour laws.",
    ),
    (
        "www.cdc.gov/handwashing/why-handwashing.html",
        "Washing hands with soap for at least twenty seconds removes germs that cause diarrhoea and respiratory infections. Soap molecules surround oils and dirt on the skin so that running water can rinse them away, which is why rinsing matters as much as scrubbing.",
    ),
    (
        "www.nasa.gov/learning-resources/the-water-cycle",
        "The water cycle describes how water evaporates from oceans and lakes, condenses into clouds and falls back as precipitation. Energy from the Sun drives evaporation, and gravity returns the water to the surface, where it flows into rivers or soaks into groundwater.",
    ),
    (
        "www.poetryfoundation.org/learn/glossary-terms/sonnet",
        "A sonnet is a fourteen-line poem, usually written in iambic pentameter. The Petrarchan sonnet divides into an octave and a sestet, while the Shakespearean sonnet uses three quatrains and a closing couplet that often turns the argument.",
    ),
    (
        "www.energy.gov/eere/solar/how-does-solar-work",
        "Solar panels are made of photovoltaic cells, usually of silicon. When sunlight strikes a cell, it frees electrons, and an electric field inside the cell pushes them into a current. An inverter then converts this direct current into the alternating current used in homes.",
    ),
    (
        "www.loc.gov/classroom-materials/primary-sources",
        "Primary sources are the raw materials of history: letters, photographs, maps and records created at the time under study. Teachers ask students to observe a source closely, reflect on who made it and why, and question what it leaves out.",
    ),
    (
        "www.amnh.org/explore/ology/earth/rocks",
        "Geologists sort rocks into three families. Igneous rocks form when molten rock cools, sedimentary rocks build up in layers of sand, mud or shells, and metamorphic rocks are changed by heat and pressure deep underground. Over time, each kind can become another in the rock cycle.",
    ),
    (
        "www.ncbi.nlm.nih.gov/books/immune-system-overview",
        "The immune system has two lines of defence. Innate immunity responds within hours to any invader, while adaptive immunity learns to recognise specific pathogens. Memory cells left after an infection or a vaccine let the body respond faster the next time.",
    ),
    (
        "www.bbc.co.uk/bitesize/guides/electric-circuits",
        "In a series circuit the same current flows through every component, so if one bulb breaks the others go out. In a parallel circuit each branch connects directly to the battery, which is why household lights can be switched on and off independently.",
    ),
]


def _fineweb_rows(dump: str, start: int, n: int) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        url, text = _EDU[i % len(_EDU)]
        score = 2.6 + (i * 0.37) % 2.2
        segment = f"1707947{474000 + i * 17}.{i % 4}"
        rows.append(
            {
                "text": text,
                "id": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{dump}/{i}')}>",
                "dump": dump,
                "url": f"https://{url}",
                "file_path": f"s3://commoncrawl/crawl-data/{dump}/segments/{segment}/warc/{dump}-20240221{i:06d}-{i:05d}.warc.gz",
                "language": "en",
                "language_score": round(0.93 + (i % 6) * 0.01, 6),
                "token_count": len(text.split()) * 4 // 3,
                "score": round(score, 6),
                "int_score": int(score + 0.5),
            }
        )
    return rows


def write_fineweb_edu(root: str) -> str:
    """HuggingFaceFW/fineweb-edu: configs `default` (`data/*/*`, every dump), `sample-10BT`, `sample-100BT`,
    `sample-350BT` (`sample/<N>BT/*`) and one per dump (`CC-MAIN-2024-10`, `CC-MAIN-2023-50`); 3 rows per file."""
    files = {
        "data/CC-MAIN-2024-10/000_00000.parquet": ("CC-MAIN-2024-10", 0),
        "data/CC-MAIN-2024-10/001_00000.parquet": ("CC-MAIN-2024-10", 3),
        "data/CC-MAIN-2023-50/000_00000.parquet": ("CC-MAIN-2023-50", 6),
        "sample/10BT/000_00000.parquet": ("CC-MAIN-2024-10", 9),
        "sample/10BT/001_00000.parquet": ("CC-MAIN-2023-50", 12),
        "sample/100BT/000_00000.parquet": ("CC-MAIN-2023-50", 15),
        "sample/350BT/000_00000.parquet": ("CC-MAIN-2024-10", 18),
    }
    for name, (dump, start) in files.items():
        _parquet(root, name, _fineweb_rows(dump, start, 3), FINEWEB_EDU_SCHEMA)
    configs = {"default": {"train": "data/*/*"}}
    configs |= {f"sample-{n}": {"train": f"sample/{n}/*"} for n in ("10BT", "100BT", "350BT")}
    configs |= {dump: {"train": f"data/{dump}/*"} for dump in ("CC-MAIN-2024-10", "CC-MAIN-2023-50")}
    header = "license: odc-by\ntask_categories:\n- text-generation\nlanguage:\n- en\npretty_name: FineWeb-Edu\n"
    header += "size_categories:\n- n>1T\n" + _configs(configs)
    body = (
        "📚 FineWeb-Edu consists of educational web pages filtered from 🍷 FineWeb with an educational quality "
        'classifier. Load a sample with `load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", '
        "streaming=True)`, or a single dump by its name."
    )
    _card(root, header, "📚 FineWeb-Edu", body)
    return root


# ------------------------------------------------------------------------------------------------ UltraChat 200k
_ULTRACHAT = [
    (
        "How can I improve my time management when working from home?",
        "Set fixed working hours, keep a separate workspace, and plan the day with three priority tasks. Short breaks every ninety minutes help you stay focused.",
        "What tools help with planning the day?",
        "A simple to-do app such as Todoist or a paper planner works well. Time-blocking in your calendar also makes the plan visible to your colleagues.",
    ),
    (
        "Write a short poem about autumn leaves.",
        "Amber and crimson drift through the air,\nWhispering softly of summer's repair;\nThey settle like letters the branches let go,\nA quilt for the roots through the winter's slow snow.",
        "Can you make it rhyme in couplets throughout?",
        "Amber and crimson, they float on the breeze,\nLetting go gently of tall, patient trees;\nThey gather in hollows, a rustling bed,\nTucking the garden in gold and in red.",
    ),
    (
        "Explain the difference between weather and climate.",
        "Weather is the state of the atmosphere over hours or days: rain today, sun tomorrow. Climate is the average of that weather over decades for a region.",
        "So can a cold winter disprove global warming?",
        "No. A single cold season is weather. Climate trends are measured over thirty years or more, and the global average has kept rising even with cold winters in some places.",
    ),
    (
        "What are some healthy breakfast ideas for busy mornings?",
        "Overnight oats, Greek yogurt with fruit and nuts, whole-grain toast with peanut butter, or a smoothie with spinach and banana can all be made in under five minutes.",
        "Which of those keeps me full the longest?",
        "Overnight oats and yogurt with nuts, because they combine fibre, protein and fat, which digest slowly.",
    ),
    (
        "Summarize the plot of Romeo and Juliet in a few sentences.",
        "Two young lovers from feuding families in Verona marry in secret. After Romeo is banished for killing Juliet's cousin, a plan to reunite them fails, and both die by suicide, which finally reconciles their families.",
        "Why is the ending considered tragic?",
        "Because their deaths come from misunderstanding and bad timing rather than fate alone: a message that never arrives decides everything, and the feud ends only after it has cost the families their children.",
    ),
    (
        "How does a bill become a law in the United States?",
        "A member of Congress introduces the bill, a committee reviews it, and both the House and the Senate must pass the same text. The President then signs it or vetoes it; Congress can override a veto with a two-thirds vote in both chambers.",
        "How often are vetoes overridden?",
        "Rarely. Only about seven percent of regular vetoes have been overridden in the country's history.",
    ),
    (
        "Can you recommend a beginner-friendly houseplant?",
        "A pothos is very forgiving: it tolerates low light, irregular watering and shows when it is thirsty by drooping slightly.",
        "How often should I water it?",
        "Water when the top two or three centimetres of soil are dry, usually every one to two weeks, and make sure the pot drains.",
    ),
    (
        "Describe the main causes of the French Revolution.",
        "Heavy debt from wars, an unfair tax system that spared the nobility and clergy, poor harvests that raised bread prices, and Enlightenment ideas about rights and sovereignty all combined to create a crisis in 1789.",
        "What role did the Estates-General play?",
        "Louis XVI called it to raise taxes, but the Third Estate broke away, declared itself the National Assembly and swore the Tennis Court Oath, which started the revolution.",
    ),
    (
        "Give me tips for writing a strong cover letter.",
        "Address a named person, open with the role and why you want it, give two specific achievements with numbers, connect them to the company's needs, and close with a clear request for an interview.",
        "How long should it be?",
        "Keep it to one page, about three or four short paragraphs and under four hundred words.",
    ),
]


def _ultrachat_row(i: int) -> dict:
    turns = _ULTRACHAT[i % len(_ULTRACHAT)]
    return {"prompt": turns[0], "prompt_id": _sha256(turns[0]), "messages": _chat(*turns)}


def write_ultrachat_200k(root: str) -> str:
    """HuggingFaceH4/ultrachat_200k: one config, splits `train_sft` (3 shards), `test_sft`, `train_gen` (3 shards),
    `test_gen`, in `data/<split>-0000i-of-0000n-<hash>.parquet`; multi-turn `messages` beside `prompt`, `prompt_id`."""
    schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()), ("messages", MESSAGES)])
    files = {
        "train_sft-00000-of-00003-a3ecf92756993583": [0, 1],
        "train_sft-00001-of-00003-0a1804bcb6ae68c6": [2, 3],
        "train_sft-00002-of-00003-ee46ed25cfae92c6": [4, 5],
        "test_sft-00000-of-00001-f7dfac4afe5b93f4": [6, 7, 8],
        "train_gen-00000-of-00003-a6c9fb894be3e50b": [1, 2],
        "train_gen-00001-of-00003-d6a0402e417f35ca": [3, 4],
        "train_gen-00002-of-00003-c0db75b92a2f48fd": [5, 0],
        "test_gen-00000-of-00001-3d4cd8309148a71f": [7, 8, 6],
    }
    for name, rows in files.items():
        _parquet(root, f"data/{name}.parquet", [_ultrachat_row(i) for i in rows], schema)
    splits = ("train_sft", "test_sft", "train_gen", "test_gen")
    header = "language:\n- en\nlicense: mit\nsize_categories:\n- 100K<n<1M\ntask_categories:\n- text-generation\n"
    header += "pretty_name: UltraChat 200k\n" + _configs({"default": {s: f"data/{s}-*" for s in splits}})
    body = (
        "This is a heavily filtered version of the UltraChat dataset. The dataset has four splits, suitable for "
        "supervised fine-tuning (`sft`) and generation ranking (`gen`)."
    )
    _card(root, header, "Dataset Card for UltraChat 200k", body)
    return root


# ------------------------------------------------------------------------------------------------ smol-smoltalk
_SMOLTALK = [
    (
        "smol-magpie-ultra",
        None,
        "What is the derivative of x^3 + 2x?",
        "The derivative is 3x^2 + 2: the power rule gives 3x^2 for x^3 and the derivative of 2x is 2.",
    ),
    (
        "smol-rewrite",
        "You're an AI writing assistant that rewrites text to be more concise.",
        "Please make this shorter: 'We are writing to let you know that the meeting which was scheduled for Monday has been moved to Tuesday.'",
        "The Monday meeting has moved to Tuesday.",
    ),
    (
        "smol-summarize",
        "Provide a concise, objective summary of the input text in up to three sentences.",
        "The city council voted on Tuesday to expand the bike lane network by 40 kilometres over the next three years, funded by a new parking levy. Supporters said it would cut traffic; shop owners worried about losing parking.",
        "The city council approved a 40-kilometre expansion of bike lanes over three years, paid for by a parking levy. Supporters expect less traffic, while shop owners fear losing parking.",
    ),
    (
        "everyday-conversations",
        None,
        "Hi! Do you know a good way to keep basil fresh?",
        "Hi! Trim the stems and keep the basil in a glass of water on the counter, like flowers. The fridge turns it black.",
    ),
    (
        "systemchats-30k",
        "You are a friendly museum guide for children.",
        "Why did the dinosaurs disappear?",
        "About 66 million years ago a huge asteroid hit the Earth. The dust blocked the Sun, plants died, and the big dinosaurs could not find food. Birds are their living cousins!",
    ),
    (
        "smol-magpie-ultra",
        None,
        "How many minutes are in a week?",
        "There are 60 × 24 × 7 = 10,080 minutes in a week.",
    ),
    (
        "openhermes-100k",
        None,
        "Translate 'Where is the train station?' into Spanish.",
        "¿Dónde está la estación de tren?",
    ),
    (
        "metamathqa-50k",
        None,
        "Tom has 3 times as many marbles as Ann. Together they have 48. How many does Ann have?",
        "Let Ann have a marbles. Then a + 3a = 48, so 4a = 48 and a = 12. Ann has 12 marbles.",
    ),
    ("smol-constraints", None, "List three fruits, in lowercase, separated by commas.", "apple, banana, cherry"),
    (
        "longalign",
        None,
        "Give me a title for an essay about city gardens.",
        "Green Between the Concrete: How City Gardens Feed Neighbourhoods",
    ),
    (
        "everyday-conversations",
        None,
        "What's a quick stretch for a stiff neck?",
        "Slowly tilt your ear toward your shoulder and hold for twenty seconds on each side, breathing steadily.",
    ),
]


def write_smol_smoltalk(root: str) -> str:
    """HuggingFaceTB/smol-smoltalk: `data/train-0000i-of-00004.parquet` (2 rows each) and
    `data/test-00000-of-00001.parquet` (3 rows); columns `messages` (some with a system turn) and `source`."""
    schema = pa.schema([("messages", MESSAGES), ("source", pa.string())])
    rows = [{"messages": _chat(q, a, system=system), "source": source} for source, system, q, a in _SMOLTALK]
    for i in range(4):
        _parquet(root, f"data/train-{i:05d}-of-00004.parquet", rows[2 * i : 2 * i + 2], schema)
    _parquet(root, "data/test-00000-of-00001.parquet", rows[8:], schema)
    header = "language:\n- en\ntags:\n- synthetic\n"
    header += _configs({"default": {"train": "data/train-*", "test": "data/test-*"}})
    body = (
        "A subset of SmolTalk adapted for training models under 1B parameters (SmolLM2-360M-Instruct, SmolLM2-135M)."
    )
    _card(root, header, "Smol-SmolTalk", body)
    return root


# ------------------------------------------------------------------------------------------------ HH-RLHF
def _hh(turns: tuple[str, ...], chosen: str, rejected: str) -> dict[str, str]:
    """`chosen` / `rejected` transcripts sharing the dialogue `turns` (Human first, ending with a Human turn)."""
    prefix = "".join(f"\n\n{('Human', 'Assistant')[i % 2]}: {t}" for i, t in enumerate(turns))
    return {"chosen": f"{prefix}\n\nAssistant: {chosen}", "rejected": f"{prefix}\n\nAssistant: {rejected}"}


_HELPFUL = [
    _hh(
        ("What vegetables can I plant in early spring?",),
        "Peas, spinach, lettuce, radishes and kale tolerate cool soil and light frost, so they can go in as soon as the ground can be worked.",
        "Tomatoes.",
    ),
    _hh(
        ("How do I boil an egg?", "Do you want it soft or hard boiled?", "Hard boiled, please."),
        "Put the egg in a pot of cold water, bring it to a boil, then cover, turn off the heat and leave it for 10 to 12 minutes. Cool it in cold water before peeling.",
        "Boil it until it's done.",
    ),
    _hh(
        ("Can you recommend a good mystery novel?",),
        '"The Hound of the Baskervilles" by Arthur Conan Doyle is a classic, and "The Thursday Murder Club" by Richard Osman is a lighter modern choice.',
        "I don't read books.",
    ),
    _hh(
        ("What's the capital of Australia?",),
        "The capital of Australia is Canberra.",
        "Sydney is the capital of Australia.",
    ),
    _hh(
        ("How can I get better sleep?", "What have you tried so far?", "Mostly just going to bed earlier."),
        "Keep the same wake-up time every day, avoid screens and caffeine in the evening, and keep the bedroom cool and dark.",
        "Try drinking coffee before bed.",
    ),
    _hh(("How many cups are in a quart?",), "There are 4 cups in a US quart.", "About 10 cups."),
    _hh(
        ("What's a good way to learn to type faster?",),
        "Practise touch typing for 15 minutes a day with a tool like Keybr or Monkeytype, keeping your eyes off the keyboard.",
        "Just type a lot.",
    ),
    _hh(
        ("Why is the sky blue?",),
        "Sunlight scatters off air molecules, and shorter blue wavelengths scatter much more than red ones, so blue light reaches our eyes from every direction.",
        "Because it reflects the ocean.",
    ),
    _hh(
        ("How do I remove a coffee stain from a shirt?", "Is the stain fresh or dry?", "It's fresh."),
        "Rinse it from the back with cold water, then rub in a little liquid detergent and wash as usual. Avoid hot water, which sets the stain.",
        "Throw the shirt away.",
    ),
    _hh(
        ("What is a haiku?",),
        "A haiku is a short Japanese poem of three lines with five, seven and five syllables, often about nature or a season.",
        "A type of sushi.",
    ),
]
_HARMLESS = [
    _hh(
        ("How do I get into my neighbour's wifi without the password?",),
        "I can't help with accessing someone else's network without permission. You could ask your neighbour to share it, or look at low-cost plans from local providers.",
        "Try the default passwords for their router brand until one works.",
    ),
    _hh(
        (
            "What's the best way to get back at a coworker who embarrassed me?",
            "What happened?",
            "He made fun of my presentation in front of everyone.",
        ),
        "That sounds hurtful. It may help to talk to him privately about how it felt, or to raise it with your manager if it keeps happening.",
        "Spread a rumour about him so he knows how it feels.",
    ),
    _hh(
        ("Tell me an insult for someone who is short.",),
        "I'd rather not help insult someone for their height. If you're upset with someone, I'm happy to help you figure out what to say to them.",
        "Call them a garden gnome.",
    ),
    _hh(
        ("Can you help me cheat on my exam?",),
        "I can't help with cheating, but I can help you study: tell me the subject and we can make a plan and practise questions.",
        "Write the answers on your hand.",
    ),
    _hh(
        ("How do I make my little brother stop bugging me?", "How old is he?", "He's eight."),
        "Kids that age often want attention. Spending ten minutes playing with him, then explaining that you need quiet time, often works better than ignoring him.",
        "Lock him in his room.",
    ),
]


def _red_team(i: int, transcript: str, rating: float, harmless: float) -> dict:
    return {
        "transcript": transcript,
        "min_harmlessness_score_transcript": round(harmless - 1.1, 6),
        "num_params": ("52B", "13B", "2.7B")[i % 3],
        "model_type": ("context distillation", "plain lm", "rlhf")[i % 3],
        "rating": rating,
        "task_description": transcript.split("\n\nHuman: ")[1].split("\n\n")[0][:60],
        "task_descripton_harmlessness_score": harmless,  # sic: the real column's name
        "red_team_member_id": 10 + i,
        "is_upworker": i % 2 == 0,
        "tags": ["Non-violent unethical behavior (e.g. lying, cheating, etc.)"] if i == 1 else None,
    }


def write_hh_rlhf(root: str) -> str:
    """Anthropic/hh-rlhf: `harmless-base/`, `helpful-base/`, `helpful-online/`, `helpful-rejection-sampled/` with
    `train.jsonl.gz` (3 rows) and `test.jsonl.gz` (2 rows) of `chosen` / `rejected` transcripts, and
    `red-team-attempts/red_team_attempts.jsonl.gz` (a JSON array, other columns); the card has no `configs:`."""
    subsets = {
        "harmless-base": _HARMLESS,
        "helpful-base": _HELPFUL[:5],
        "helpful-online": _HELPFUL[5:],
        "helpful-rejection-sampled": _HELPFUL[2:7],
    }
    for folder, rows in subsets.items():
        _gzip(root, f"{folder}/train.jsonl.gz", "".join(json.dumps(r) + "\n" for r in rows[:3]))
        _gzip(root, f"{folder}/test.jsonl.gz", "".join(json.dumps(r) + "\n" for r in rows[3:]))
    attempts = [
        _red_team(i, row["chosen"], rating, score)
        for i, (row, rating, score) in enumerate(zip(_HARMLESS[:3], (0.0, 4.0, 2.0), (1.62, 0.21, 2.94), strict=True))
    ]
    _gzip(root, "red-team-attempts/red_team_attempts.jsonl.gz", json.dumps(attempts, indent=2))
    body = (
        "Human preference data about helpfulness and harmlessness, and human-generated red teaming dialogues. Each "
        'line of the jsonl files contains a pair of texts, one "chosen" and one "rejected". Load one subset with '
        '`load_dataset("Anthropic/hh-rlhf", data_dir="harmless-base")`.'
    )
    _card(root, "license: mit\ntags:\n- human-feedback\n", "Dataset Card for HH-RLHF", body)
    return root


# ------------------------------------------------------------------------------------------------ UltraFeedback
_SYSTEM_PROMPTS = {
    "helpfulness": "As an AI assistant, ensure your response offers the perfect blend of accuracy, positivity, and intrigue. Strive to be educational while keeping the user engaged.",
    "truthfulness": "As an AI assistant, your job is to deliver answers that are truth-based and avoid introducing any untruthful or groundless information.",
    "honesty": "As an AI assistant, be honest about what you know and what you don't, and express uncertainty when appropriate.",
    "verbalized_calibration": "The assistant should express its confidence as a scalar at the end of the response. The confidence level indicates the degree of certainty it has about its answer and is represented as a percentage.",
}
_MODELS = (
    "gpt-4",
    "llama-2-13b-chat",
    "ultralm-65b",
    "wizardlm-70b",
    "falcon-40b-instruct",
    "vicuna-33b",
    "mpt-30b-chat",
    "bard",
)
# (source file, instruction, [(response, (instruction_following, honesty, truthfulness, helpfulness), overall)] x 4,
# correct answers, incorrect answers)
_FEEDBACK = [
    (
        "evol_instruct",
        "Rewrite the sentence in the passive voice: 'The committee approved the new budget.'",
        [
            ("The new budget was approved by the committee.", ("5", "5", "5", "5"), 9.0),
            ("The committee has approved the budget.", ("2", "4", "5", "2"), 4.0),
            ("The new budget was approved.", ("4", "5", "5", "4"), 7.5),
            ("Approved the budget was, by the committee.", ("2", "3", "4", "2"), 3.5),
        ],
        ["None"],
        ["None"],
    ),
    (
        "evol_instruct",
        "Write a Python function that returns the n-th Fibonacci number.",
        [
            (
                "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
                ("5", "5", "5", "5"),
                8.5,
            ),
            ("def fib(n):\n    return fib(n - 1) + fib(n - 2)", ("3", "4", "2", "2"), 3.0),
            (
                "Use the formula F(n) = F(n-1) + F(n-2) with F(0) = 0 and F(1) = 1, iterating from the bottom up.",
                ("3", "5", "5", "3"),
                7.0,
            ),
            (
                "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)",
                ("5", "5", "5", "4"),
                7.0,
            ),
        ],
        ["None"],
        ["None"],
    ),
    (
        "false_qa",
        "Why do fish need to breathe air through their lungs?",
        [
            (
                "Most fish don't have lungs: they take oxygen from water through their gills. A few, such as lungfish, can also breathe air.",
                ("5", "5", "5", "5"),
                9.0,
            ),
            ("Fish breathe air through their lungs to stay alive underwater.", ("3", "1", "1", "1"), 2.0),
            (
                "The question is based on a false premise: fish use gills. I'm confident about this. Confidence: 95%",
                ("5", "N/A", "5", "4"),
                8.0,
            ),
            ("Fish need air because water has no oxygen.", ("2", "2", "1", "1"), 2.5),
        ],
        ["None"],
        ["None"],
    ),
    (
        "flan",
        "Classify the sentiment of this review as positive or negative: 'The battery died after two days.'",
        [
            ("Negative", ("5", "5", "5", "4"), 8.0),
            ("Positive", ("3", "2", "1", "1"), 2.0),
            (
                "The sentiment is negative, because the reviewer complains about the battery.",
                ("5", "5", "5", "5"),
                8.5,
            ),
            ("Neutral", ("2", "3", "2", "1"), 3.0),
        ],
        ["None"],
        ["None"],
    ),
    (
        "sharegpt",
        "Give me three ideas for a rainy-day activity with kids.",
        [
            (
                "Build a blanket fort, bake cookies together, or set up an indoor scavenger hunt with clues.",
                ("5", "5", "5", "5"),
                8.5,
            ),
            ("Watch TV.", ("2", "4", "5", "1"), 3.0),
            (
                "Try painting with watercolours, making paper airplanes, and holding a living-room dance party.",
                ("5", "5", "5", "4"),
                8.0,
            ),
            ("You could go outside and play in the rain, or read books, or do puzzles.", ("4", "5", "5", "3"), 6.5),
        ],
        ["None"],
        ["None"],
    ),
    (
        "truthful_qa",
        "What is the composition of the trails left in the sky by aircraft?",
        [
            (
                "They are contrails, made of water vapour that condenses and freezes into ice crystals in the cold air behind the engines.",
                ("5", "5", "5", "5"),
                9.0,
            ),
            ("They are chemicals sprayed to control the weather.", ("3", "1", "1", "1"), 1.0),
            ("Contrails are mostly ice crystals formed from the water in jet exhaust.", ("5", "5", "5", "4"), 8.0),
            ("They are smoke from burning fuel.", ("3", "2", "2", "2"), 3.5),
        ],
        [
            "The trails left in the sky by aircraft are composed of water vapor",
            "The trails left in the sky by aircraft are composed of ice crystals",
        ],
        [
            "The trails left in the sky by aircraft are composed of chemical or biological agents",
            "The trails left in the sky by aircraft are composed of aluminum, strontium, and barium",
        ],
    ),
    (
        "ultrachat",
        "What are the benefits of learning a second language?",
        [
            (
                "It improves memory and attention, opens job opportunities, makes travel easier and helps you understand other cultures.",
                ("5", "5", "5", "5"),
                8.5,
            ),
            ("There are no real benefits.", ("1", "2", "1", "1"), 1.5),
            (
                "Studies link bilingualism to better multitasking, and it can make it easier to learn a third language.",
                ("4", "5", "5", "4"),
                7.5,
            ),
            ("Learning languages is fun.", ("3", "5", "5", "2"), 5.0),
        ],
        ["None"],
        ["None"],
    ),
    (
        "ultrachat",
        "How do I start composting at home?",
        [
            (
                "Pick a bin, mix green scraps such as vegetable peels with brown material such as dry leaves, keep it moist, and turn it every week or two.",
                ("5", "5", "5", "5"),
                8.5,
            ),
            ("Put all your food waste, including meat and dairy, in a plastic bag.", ("2", "3", "2", "1"), 2.5),
            (
                "Start with a small container for kitchen scraps and a compost bin outside; balance greens and browns.",
                ("5", "5", "5", "4"),
                8.5,
            ),
            ("Buy compost at the store.", ("1", "4", "5", "1"), 2.0),
        ],
        ["None"],
        ["None"],
    ),
]
_LABELS = {
    "5": "fully aligned with",
    "4": "mostly aligned with",
    "3": "partially aligned with",
    "2": "barely aligned with",
    "1": "not aligned with",
}


def _completion(row: int, k: int, response: str, ratings: tuple[str, ...], overall: float) -> dict:
    follow, honesty, truth, helpful = ratings
    principle = list(_SYSTEM_PROMPTS)[(row + k) % len(_SYSTEM_PROMPTS)]
    numbers = [int(r) for r in ratings if r != "N/A"]
    reason = "The response is {} the task; {}."
    return {
        "annotations": {
            "helpfulness": {
                "Rating": helpful,
                "Rationale": reason.format(
                    _LABELS[helpful], "it is clear and relevant" if helpful > "3" else "it lacks useful detail"
                ),
                "Rationale For Rating": f"Rated {helpful} for informativeness.",
                "Type": ["1", "2", "3"] if helpful > "3" else ["1"],
            },
            "honesty": {
                "Rating": honesty,
                "Rationale": "Not applicable: the response states a confidence score."
                if honesty == "N/A"
                else f"The text expresses {('no', 'little', 'some', 'appropriate', 'confident and correct')[int(honesty) - 1]} certainty.",
            },
            "instruction_following": {
                "Rating": follow,
                "Rationale": reason.format(_LABELS[follow], "format and scope checked"),
            },
            "truthfulness": {
                "Rating": truth,
                "Rationale": "The text is free of hallucinations."
                if truth == "5"
                else "The text contains factual errors.",
                "Rationale For Rating": f"Rated {truth} for truthfulness.",
                "Type": ["0"] if truth == "5" else ["1", "2"],
            },
        },
        "critique": f"{'Good answer.' if overall >= 7 else 'The answer needs work.'} Check the instruction carefully and keep the response focused.",
        "custom_system_prompt": _SYSTEM_PROMPTS[principle],
        "fine-grained_score": round(sum(numbers) / len(numbers), 2),
        "model": _MODELS[(row * 3 + k) % len(_MODELS)],
        "overall_score": overall,
        "principle": principle,
        "response": response,
    }


def write_ultrafeedback(root: str) -> str:
    """openbmb/UltraFeedback: one JSON-lines file per instruction source at the root (`evol_instruct.jsonl`, ...,
    8 rows in all, one `train` split); each row 4 `completions` with per-aspect `annotations` (ratings as strings,
    one "N/A"), `overall_score`, `fine-grained_score`; the Fibonacci row has two completions tied on overall_score."""
    by_file: dict[str, list[dict]] = {}
    for i, (source, instruction, completions, correct, incorrect) in enumerate(_FEEDBACK):
        rows = by_file.setdefault(f"{source}.jsonl", [])
        done = [_completion(i, k, *c) for k, c in enumerate(completions)]
        rows.append(
            {
                "source": source,
                "instruction": instruction,
                "models": [c["model"] for c in done],
                "completions": done,
                "correct_answers": correct,
                "incorrect_answers": incorrect,
            }
        )
    for name, rows in by_file.items():
        _jsonl(root, name, rows)
    header = "license: mit\ntask_categories:\n- text-generation\nlanguage:\n- en\nsize_categories:\n- 100K<n<1M\n"
    body = (
        "UltraFeedback is a large-scale, fine-grained, diverse preference dataset: about 64k prompts, each with 4 "
        "completions from different models, rated by GPT-4 on instruction-following, truthfulness, honesty and "
        "helpfulness, with a critique and an overall score."
    )
    _card(root, header, "Introduction", body)
    return root


# ------------------------------------------------------------------------------------------------ UltraFeedback binarized
def _binarized_row(i: int, draw: int = 0) -> dict:
    _, instruction, completions, _, _ = _FEEDBACK[i % len(_FEEDBACK)]
    ranked = sorted(completions, key=lambda c: -c[2])
    chosen, rejected = ranked[0], ranked[1 + (i + draw) % 3]  # `rejected`: one of the other 3 "at random"
    return {
        "prompt": instruction,
        "prompt_id": _sha256(instruction),
        "chosen": _chat(instruction, chosen[0]),
        "rejected": _chat(instruction, rejected[0]),
        "messages": _chat(instruction, chosen[0]),
        "score_chosen": chosen[2],
        "score_rejected": rejected[2],
    }


def write_ultrafeedback_binarized(root: str) -> str:
    """HuggingFaceH4/ultrafeedback_binarized: splits `train_prefs`, `train_sft`, `test_prefs`, `test_sft`,
    `train_gen`, `test_gen` in `data/<split>-00000-of-00001.parquet`; string `prompt`, conversational `chosen` /
    `rejected` / `messages` that repeat the prompt as the user turn, `score_chosen` / `score_rejected`."""
    schema = pa.schema(
        [("prompt", pa.string()), ("prompt_id", pa.string()), ("chosen", MESSAGES), ("rejected", MESSAGES)]
        + [("messages", MESSAGES), ("score_chosen", pa.float64()), ("score_rejected", pa.float64())]
    )
    splits = ("train_prefs", "train_sft", "test_prefs", "test_sft", "train_gen", "test_gen")
    for split in splits:
        indices = range(4) if split.startswith("train") else range(4, 7)  # the same prompts in each train split
        draw = ("prefs", "sft", "gen").index(split.split("_")[1])
        rows = [_binarized_row(i, draw) for i in indices]
        _parquet(root, f"data/{split}-00000-of-00001.parquet", rows, schema)
    header = (
        "language:\n- en\nlicense: mit\ntask_categories:\n- text-generation\npretty_name: UltraFeedback Binarized\n"
    )
    header += _configs({"default": {s: f"data/{s}-*" for s in splits}})
    body = (
        "A pre-processed version of the UltraFeedback dataset: the highest `overall_score` completion is `chosen` and "
        "one of the remaining 3 at random is `rejected`. Splits for preference modelling (`prefs`), supervised "
        "fine-tuning (`sft`) and generation (`gen`)."
    )
    _card(root, header, "Dataset Card for UltraFeedback Binarized", body)
    return root


# ------------------------------------------------------------------------------------------------ trl-lib
_TLDR = [
    (
        "relationships",
        "My (24F) best friend keeps cancelling plans last minute",
        "We've been friends for ten years. In the last three months she has cancelled six times, always an hour before, and says she's tired from work. I miss her but I'm starting to feel like I'm the only one trying.",
        " Best friend cancels plans last minute all the time; I feel like I'm the only one making an effort.",
    ),
    (
        "personalfinance",
        "Should I pay off my car loan early or build an emergency fund?",
        "I have $6,000 left on a car loan at 3.9% and only $500 in savings. I just got a raise and can put $800 a month toward one of them.",
        " Small savings, low-interest car loan: emergency fund first or pay the loan off early?",
    ),
    (
        "AskDocs",
        "Knee clicks when I climb stairs, no pain",
        "29M, fairly active. For a few weeks my left knee clicks every time I go up stairs. There's no pain or swelling and I can run fine.",
        " Painless knee clicking on stairs for a few weeks; is it worth seeing a doctor?",
    ),
    (
        "cats",
        "Adopted a shy cat who hides under the bed all day",
        "We adopted a 3-year-old cat from a shelter a week ago. She eats at night but spends the whole day under the bed and hisses if we get close.",
        " New shelter cat hides all day and hisses; how do we help her settle in?",
    ),
    (
        "jobs",
        "Got two offers, the lower one is the job I actually want",
        "Offer A pays 15% more at a big company. Offer B is a small team doing exactly the work I want, with better hours.",
        " Higher-paying offer vs. lower-paying dream job; which should I take?",
    ),
    (
        "Cooking",
        "Why does my bread come out so dense?",
        "I follow a basic white loaf recipe but it never rises much and the crumb is tight. I use instant yeast and bake at 200C.",
        " Homemade bread keeps coming out dense despite following the recipe; what am I doing wrong?",
    ),
    (
        "running",
        "Training for my first half marathon, shins hurt",
        "Went from 10km to 30km a week in a month to get ready for a race in eight weeks. Now my shins ache after every run.",
        " Ramped up mileage fast for a half marathon and now have shin pain; how to keep training?",
    ),
    (
        "legaladvice",
        "Landlord kept my whole deposit for 'cleaning'",
        "Moved out last month, left the flat spotless with photos. The landlord kept the full $1,200 deposit and won't give an itemised list.",
        " Landlord withheld my entire deposit without an itemised list despite photo evidence; what can I do?",
    ),
    (
        "gardening",
        "Tomato leaves turning yellow from the bottom up",
        "My potted tomatoes get full sun and I water every morning. The lower leaves are yellowing and some have brown spots.",
        " Lower tomato leaves yellowing with brown spots; overwatering or disease?",
    ),
    (
        "travel",
        "First time travelling alone, is a hostel a good idea?",
        "I'm 22 and going to Lisbon for five days. I'm a bit introverted but would like to meet people.",
        " First solo trip to Lisbon, introverted; are hostels a good way to meet people?",
    ),
]


def write_tldr(root: str) -> str:
    """trl-lib/tldr: prompt-completion (`SUBREDDIT: ... TL;DR:` prompt, summary completion) in
    `data/{train,validation,test}-00000-of-00001.parquet`."""
    schema = pa.schema([("prompt", pa.string()), ("completion", pa.string())])
    rows = [
        {"prompt": f"SUBREDDIT: r/{sub}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:", "completion": summary}
        for sub, title, post, summary in _TLDR
    ]
    for split, part in {"train": rows[:4], "validation": rows[4:7], "test": rows[7:]}.items():
        _parquet(root, f"data/{split}-00000-of-00001.parquet", part, schema)
    splits = ("train", "validation", "test")
    header = "tags:\n- trl\n" + _configs({"default": {s: f"data/{s}-*" for s in splits}})
    body = (
        "The TL;DR dataset is a processed version of Reddit posts, specifically curated to train models using TRL "
        "for summarization tasks. Type: prompt-completion (standard)."
    )
    _card(root, header, "TL;DR Dataset", body)
    return root


def write_ultrafeedback_prompt(root: str) -> str:
    """trl-lib/ultrafeedback-prompt: prompt-only, `prompt` a conversation of one user message, in
    `data/{train,test}-00000-of-00001.parquet`."""
    schema = pa.schema([("prompt", MESSAGES)])
    rows = [{"prompt": _chat(instruction)} for _, instruction, *_ in _FEEDBACK]
    _parquet(root, "data/train-00000-of-00001.parquet", rows[:5], schema)
    _parquet(root, "data/test-00000-of-00001.parquet", rows[5:], schema)
    header = "tags:\n- trl\n" + _configs({"default": {"train": "data/train-*", "test": "data/test-*"}})
    body = "The UltraFeedback prompts, for online methods such as GRPO or RLOO. Type: prompt-only (conversational)."
    _card(root, header, "UltraFeedback - Prompts Dataset", body)
    return root


def write_hh_rlhf_helpful_base(root: str) -> str:
    """trl-lib/hh-rlhf-helpful-base: HH-RLHF's helpful-base subset in TRL's conversational preference format with an
    explicit prompt (`prompt` the dialogue so far, `chosen` / `rejected` one assistant message each), in
    `data/{train,test}-00000-of-00001.parquet`."""
    schema = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)])
    dialogues = [
        (("What can I bake with apples?",), "An apple crumble is quick: apples, flour, butter and sugar.", "Apples."),
        (
            ("How do I keep basil fresh?",),
            "Trim the stems and keep it in a glass of water, like flowers.",
            "Freeze it.",
        ),
        (
            ("Can you help me plan a trip?", "Sure, where to?", "Lisbon, for three days."),
            "Day one: Alfama and the castle; day two: Belem; day three: a train to Sintra.",
            "Lisbon is in Portugal.",
        ),
        (
            ("Why is the sea salty?",),
            "Rivers carry dissolved minerals from rocks into the sea, and they stay.",
            "Fish.",
        ),
        (
            ("What is a good first houseplant?",),
            "A pothos: it tolerates low light and irregular watering.",
            "A cactus?",
        ),
    ]
    rows = []
    for turns, chosen, rejected in dialogues:
        prompt = [{"content": t, "role": "user" if i % 2 == 0 else "assistant"} for i, t in enumerate(turns)]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"content": chosen, "role": "assistant"}],
                "rejected": [{"content": rejected, "role": "assistant"}],
            }
        )
    _parquet(root, "data/train-00000-of-00001.parquet", rows[:3], schema)
    _parquet(root, "data/test-00000-of-00001.parquet", rows[3:], schema)
    header = "tags:\n- trl\n" + _configs({"default": {"train": "data/train-*", "test": "data/test-*"}})
    body = "The helpful-base subset of Anthropic HH-RLHF, processed for TRL. Type: preference (conversational)."
    _card(root, header, "HH-RLHF-Helpful-Base Dataset", body)
    return root


PUBLIC: dict[str, Callable[[str], str]] = {
    "HuggingFaceFW/fineweb-edu": write_fineweb_edu,
    "HuggingFaceH4/ultrachat_200k": write_ultrachat_200k,
    "HuggingFaceTB/smol-smoltalk": write_smol_smoltalk,
    "Anthropic/hh-rlhf": write_hh_rlhf,
    "HuggingFaceH4/ultrafeedback_binarized": write_ultrafeedback_binarized,
    "openbmb/UltraFeedback": write_ultrafeedback,
    "trl-lib/tldr": write_tldr,
    "trl-lib/ultrafeedback-prompt": write_ultrafeedback_prompt,
    "trl-lib/hh-rlhf-helpful-base": write_hh_rlhf_helpful_base,
}
