from transformers import AutoTokenizer

from hf_rlhf.data.world import TinyWorld
from hf_rlhf.tokenizer import EOS_TOKEN, PAD_TOKEN, train_bpe_tokenizer


def test_bpe_round_trip_special_tokens_and_chat_template(tmp_path):
    docs = TinyWorld(0).documents(300)
    tokenizer = train_bpe_tokenizer(docs, vocab_size=400)
    assert len(tokenizer) == 400
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in docs[:20] + ["Unseen bytes: ünïcödé ✓ 123\n\ttabs"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # BPE merged frequent words: far fewer tokens than bytes
    assert len(tokenizer(docs[0])["input_ids"]) < len(docs[0].encode()) / 2

    messages = [
        {"role": "user", "content": "What color is the fox?"},
        {"role": "assistant", "content": "The fox is red."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|user|>\nWhat color is the fox?<|end|>\n<|assistant|>\nThe fox is red.<|end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(prompt) and prompt.endswith("<|assistant|>\n")
    # role markers are single special tokens
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in tokenizer(prompt)["input_ids"]

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.apply_chat_template(messages, tokenize=False) == rendered
    assert loaded(docs[0])["input_ids"] == tokenizer(docs[0])["input_ids"]
    assert loaded.pad_token_id == tokenizer.pad_token_id
