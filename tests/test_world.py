from hf_rlhf.data.world import ANIMALS, TinyWorld


def test_generators_are_deterministic():
    a, b = TinyWorld(3), TinyWorld(3)
    assert a.facts == b.facts
    assert a.documents(50) == b.documents(50)
    train, _ = a.split_prompts(20)
    assert a.demonstrations(train, 30) == b.demonstrations(train, 30)
    assert TinyWorld(4).documents(50) != a.documents(50)


def test_held_out_prompts_never_appear_in_demonstrations():
    world = TinyWorld(0)
    train, held_out = world.split_prompts(50)
    assert len(held_out) == 50 and not {p.text for p in train} & {p.text for p in held_out}
    demo_prompts = {row["prompt"] for row in world.demonstrations(train, 500)}
    assert not demo_prompts & {p.text for p in held_out}


def test_corpus_holds_quiz_pages_and_forum_threads():
    docs = TinyWorld(0).documents(200)
    assert any(d.startswith(("Quiz time!", "Animal quiz.", "Questions for class.")) for d in docs)
    assert any(d.startswith("Q: ") and "\nA: " in d for d in docs)
    assert any(d.startswith("About the ") for d in docs)


def test_gold_labeler_on_hand_written_cases():
    world = TinyWorld(0)
    world.facts["fox"] = {"color": "red", "food": "berries", "home": "forest"}
    q = "What color is the fox?"
    cases = {
        "The fox is red.": 1.0,  # ideal
        "red": 0.6,  # right but terse: no sentence about the fox, not a complete sentence
        "The fox is blue.": 0.5,  # wrong fact, good form
        "The fox is red or blue. Not sure.": 0.5,  # hedged (0.2) + about the fox + no question
        "Well, the fox is red. Also, the cat is blue. I like animals a lot.": 0.5,  # rambling mentions blue too
        "What does the owl eat?": 0.0,  # continues the quiz: off topic
        "why do you ask?": 0.0,
        "": 0.0,
        "The fox is red?": 0.7,  # right fact about the fox, but not a statement and a question back
    }
    for response, expected in cases.items():
        assert world.gold_score(q, response) == expected, response
    assert world.gold_score("Hi! Where is the fox found?", "The fox lives in the forest.") == 1.0
    assert world.gold_score("Tell me what the fox eats.", "The fox eats berries.") == 1.0


def test_ideal_answers_score_full_marks_for_every_prompt():
    world = TinyWorld(1)
    prompts = world.all_prompts()
    assert len(prompts) == len(ANIMALS) * 3 * 4 * 4
    assert all(world.gold_score(p.text, world.ideal_answer(p)) == 1.0 for p in prompts)


def test_demonstrations_span_a_spectrum_of_quality():
    world = TinyWorld(0)
    train, _ = world.split_prompts(50)
    scores = [world.gold_score(r["prompt"], r["completion"]) for r in world.demonstrations(train, 1000)]
    ideal = sum(s == 1.0 for s in scores) / len(scores)
    assert 0.45 < ideal < 0.65  # most are ideal, but not all: the headroom RL can take
    assert min(scores) < 1.0
