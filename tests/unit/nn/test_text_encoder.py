from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ser_lightning.nn.pooling import masked_mean
from ser_lightning.nn.text import TextEncoder, minilm_path, tiny_text_config

TEXTS = [
    "Hi.",
    "I can't believe you did that to me, I'm so angry right now!",
    "Okay then.",
    "We are going to the beach tomorrow if it doesn't rain.",
]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(config=tiny_text_config(), freeze=False).eval()


def test_minilm_path_points_at_the_packaged_model():
    path = minilm_path()
    assert (path / "config.json").is_file()
    assert (path / "tokenizer.json").is_file()


def test_minilm_loads_offline_frozen(minilm):
    assert minilm.output_dim == 384
    assert minilm.tokenizer_name_or_path == str(minilm_path())
    assert minilm.model.pooler is None
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.model.training


def test_minilm_embeds_paraphrases_closer_than_unrelated_sentences(minilm):
    texts = [
        "I am really angry with you.",
        "You make me so furious.",
        "The train leaves at seven tomorrow morning.",
    ]
    embeddings = minilm(**minilm.tokenize(texts))
    assert embeddings.shape == (3, 384)
    assert not embeddings.requires_grad
    paraphrase = F.cosine_similarity(embeddings[0], embeddings[1], dim=0)
    unrelated = F.cosine_similarity(embeddings[0], embeddings[2], dim=0)
    assert paraphrase > unrelated + 0.2


def test_forward_is_the_attention_weighted_mean_of_last_hidden_states(tiny):
    tokens = tiny.tokenize(TEXTS)
    with torch.no_grad():
        hidden = tiny.model(**tokens).last_hidden_state
        expected = masked_mean(hidden, tokens["attention_mask"])
        torch.testing.assert_close(tiny(**tokens), expected)


def test_batch_of_four_equals_four_batches_of_one(tiny):
    tokens = tiny.tokenize(TEXTS)
    assert tokens["attention_mask"].sum(dim=1).unique().numel() == 4  # really different lengths
    with torch.no_grad():
        batched = tiny(**tokens)
        single = torch.cat([tiny(**tiny.tokenize([text])) for text in TEXTS])
    assert batched.shape == (4, 32)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_tiny_config_uses_the_minilm_tokenizer_and_trains(tiny):
    assert tiny.tokenizer_name_or_path == str(minilm_path())
    assert tiny.output_dim == 32
    tiny.train()
    try:
        tiny(**tiny.tokenize(TEXTS)).square().sum().backward()
        missing = [n for n, p in tiny.named_parameters() if p.grad is None]
        assert missing == []  # pooler removed: every parameter is used
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()


def test_tokenize_truncates_to_max_length():
    encoder = TextEncoder(config=tiny_text_config(), max_length=5)
    tokens = encoder.tokenize(TEXTS)
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (4, 5)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.tokenize("one string")


def test_clear_errors_on_bad_input():
    with pytest.raises(ValueError, match="either"):
        TextEncoder(model="bert-base-uncased", config=tiny_text_config())
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(config=tiny_text_config(vocab_size=100))
    with pytest.raises(ValueError, match="positions"):
        TextEncoder(config=tiny_text_config(max_position_embeddings=16), max_length=64)
    with pytest.raises(ValueError, match="give `model`"):
        TextEncoder(model=None)
