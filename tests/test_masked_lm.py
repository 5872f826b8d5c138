"""The masked-LM backend on tiny random RoBERTa / BERT models saved to disk."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import AddedToken, ByteLevelBPETokenizer
from transformers import BertConfig, BertForMaskedLM, BertTokenizer, RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

from bayesprompt.data.task import Example, Task
from bayesprompt.lm import MaskedLMBlackBox, Meter, load_backend

SST2 = Task(
    name="sst2",
    label_names=("negative", "positive"),
    encoder_verbalizers=("It was terrible.", "It was great."),
    mlm_template="{text} It was {mask} .",
    mlm_verbalizers=("terrible", "great"),
)
PAIR = Task(
    name="rte",
    label_names=("entailment", "not_entailment"),
    encoder_verbalizers=("Yes.", "No."),
    mlm_template="{text} ? {mask} , {text_pair}",
    mlm_verbalizers=("yes", "no"),
    is_pair=True,
)
WORDS = "it was great terrible good bad the movie a film and yes no fan ##tastic".split()
CORPUS = ["it was great . it was terrible . the movie was good and bad , a film ? yes no"] * 4
EXAMPLES = [
    Example("a good film", 1),
    Example("the movie was bad and the film was bad", 0),
    Example("great", 1),
]


def _config_kwargs(tokenizer):
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """Byte-level BPE tokenizer (verbalizers are single 'Ġword' tokens) + random RoBERTa."""
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(CORPUS, vocab_size=320, min_frequency=1, special_tokens=specials, show_progress=False)
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in json.loads(bpe._tokenizer.to_str())["model"]["merges"]]
    mask = AddedToken("<mask>", lstrip=True, normalized=False)  # as in roberta-base
    tokenizer = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges, mask_token=mask)
    config = RobertaConfig(max_position_embeddings=66, bos_token_id=0, eos_token_id=2, **_config_kwargs(tokenizer))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer.save_pretrained(path)
    RobertaForMaskedLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """WordPiece vocab.txt tokenizer + random BERT."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = path / "source-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", *WORDS]) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab))
    torch.manual_seed(1)
    tokenizer.save_pretrained(path)
    BertForMaskedLM(BertConfig(max_position_embeddings=64, **_config_kwargs(tokenizer))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def roberta(roberta_dir):
    return MaskedLMBlackBox(SST2, roberta_dir, max_length=32)


@pytest.fixture(scope="module")
def bert(bert_dir):
    return MaskedLMBlackBox(SST2, bert_dir, max_length=32)


def prompts(box, num, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num, length, box.embed_dim, generator=gen)


def by_hand(box, prompt, batch):
    """Full-vocabulary logits from a plain forward pass, read at mask position + n."""
    n = prompt.shape[0]
    words = box.model.get_input_embeddings()(batch.input_ids)
    inputs = torch.cat([words[:, :1], prompt.expand(len(batch), -1, -1), words[:, 1:]], 1)
    mask = batch.attention_mask
    attention = torch.cat([mask[:, :1], torch.ones(len(batch), n, dtype=mask.dtype), mask[:, 1:]], 1)
    with torch.inference_mode():
        logits = box.model(inputs_embeds=inputs, attention_mask=attention).logits
    at = batch.extras["mask_position"] + n
    return logits[torch.arange(len(batch)), at][:, box.verbalizer_ids]


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_loads_and_scores(name, request):
    box = request.getfixturevalue(name)
    tokens = box.tokenizer.convert_ids_to_tokens(box.verbalizer_ids)
    assert tokens == (["Ġterrible", "Ġgreat"] if name == "roberta" else ["terrible", "great"])
    batch = box.encode(EXAMPLES)
    ids = batch.input_ids
    assert ids[0, 0] == box.tokenizer.cls_token_id
    assert (ids[torch.arange(3), batch.extras["mask_position"]] == box.tokenizer.mask_token_id).all()
    scores = box.score(prompts(box, 4, 3), batch)
    assert scores.shape == (4, 3, 2) and scores.dtype == torch.float32
    assert box.meter.calls == 4 and box.embedding_table().shape == (len(box.tokenizer), 32)


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_scores_are_mask_logits_after_the_prompt(name, request):
    box = request.getfixturevalue(name)
    batch = box.encode(EXAMPLES)
    prompt = prompts(box, 1, 5, seed=1)
    torch.testing.assert_close(box.score(prompt, batch)[0], by_hand(box, prompt[0], batch), rtol=0, atol=1e-5)
    empty = torch.zeros(1, 0, 32)
    torch.testing.assert_close(box.score(empty, batch)[0], by_hand(box, empty[0], batch), rtol=0, atol=1e-5)


def test_prompt_changes_scores(roberta):
    batch = roberta.encode(EXAMPLES)
    scores = roberta.score(prompts(roberta, 2, 4, seed=2), batch)
    zero = roberta.score(torch.zeros(1, 0, 32), batch)
    assert (scores[0] - scores[1]).abs().max() > 1e-4  # random tiny model: small but far above fp noise (~1e-7)
    assert (scores[0] - zero[0]).abs().max() > 1e-4


def test_add_mode_offsets_from_initial_prompt(roberta_dir, roberta):
    batch = roberta.encode(EXAMPLES)
    token_ids = torch.tensor([5, 9, 12])
    initial = roberta.embedding_table()[token_ids]
    add = MaskedLMBlackBox(SST2, roberta_dir, mode="add", initial_prompt=token_ids, max_length=32)
    torch.testing.assert_close(add.initial_prompt, initial, rtol=0, atol=0)
    delta = prompts(roberta, 3, 3, seed=3)
    # bitwise: "add" mode adds p0 to the prompt in fp32, exactly what we do here
    assert torch.equal(add.score(delta, batch), roberta.score(initial + delta, batch))
    assert torch.equal(add.score(torch.zeros(1, 3, 32), batch), roberta.score(initial[None], batch))
    with pytest.raises(ValueError, match=r"needs prompts \[P, 3, 32\] matching initial_prompt"):
        add.score(torch.zeros(1, 4, 32), batch)
    assert add.meter.calls == 4


def test_mode_errors(roberta_dir):
    with pytest.raises(ValueError, match="mode 'add' needs initial_prompt"):
        MaskedLMBlackBox(SST2, roberta_dir, mode="add", max_length=32)
    with pytest.raises(ValueError, match="only used in mode 'add'"):
        MaskedLMBlackBox(SST2, roberta_dir, initial_prompt=torch.zeros(2, 32), max_length=32)
    with pytest.raises(ValueError, match=r"must be \[n_tokens, 32\]"):
        MaskedLMBlackBox(SST2, roberta_dir, mode="add", initial_prompt=torch.zeros(2, 7), max_length=32)
    with pytest.raises(ValueError, match="mode must be"):
        MaskedLMBlackBox(SST2, roberta_dir, mode="append", max_length=32)
    with pytest.raises(ValueError, match=r"max_length must be an int in \[3, 64\]"):
        MaskedLMBlackBox(SST2, roberta_dir)  # default 128 > this model's 64 positions


@pytest.mark.parametrize("name,word", [("roberta", "fantastic"), ("bert", "fantastic"), ("bert", "zebra")])
def test_multi_token_verbalizer_is_rejected(name, word, roberta_dir, bert_dir):
    task = Task("t", ("neg", "pos"), ("Bad.", "Good."), "{text} It was {mask} .", ("terrible", word))
    path = roberta_dir if name == "roberta" else bert_dir
    with pytest.raises(ValueError, match=f"verbalizer word '{word}' is not a single token"):
        MaskedLMBlackBox(task, path, max_length=32)


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_mask_survives_truncation(name, request):
    box = request.getfixturevalue(name)
    long = Example(" ".join(["the movie was good and bad"] * 20), 1)
    batch = box.encode([long, EXAMPLES[0]])
    ids = batch.input_ids[0].tolist()
    assert len(ids) == box.max_length == batch.attention_mask[0].sum()
    tail = box.tokenizer(" It was " + box.tokenizer.mask_token + " .", add_special_tokens=False)["input_ids"]
    assert ids[-len(tail) - 1 : -1] == tail[-len(ids[-len(tail) - 1 : -1]) :]  # template end kept
    assert ids[-1] == box.tokenizer.sep_token_id
    assert ids[batch.extras["mask_position"][0]] == box.tokenizer.mask_token_id
    assert box.score(prompts(box, 2, 8), batch).shape == (2, 2, 2)


def test_pair_truncation_cuts_the_longer_part(bert_dir):
    box = MaskedLMBlackBox(PAIR, bert_dir, max_length=20)
    batch = box.encode([Example("a film " * 30, 0, "yes it was good")])
    text = box.tokenizer.decode(batch.input_ids[0])
    assert batch.input_ids.shape[1] == 20 and text.endswith("? [MASK], yes it was good [SEP]")
    with pytest.raises(ValueError, match="template and special tokens alone"):
        MaskedLMBlackBox(PAIR, bert_dir, max_length=4).encode([Example("a", 0, "b")])


def test_same_scores_whatever_the_population_or_padding(roberta, monkeypatch):
    batch = roberta.encode(EXAMPLES)
    population = prompts(roberta, 5, 4, seed=4)
    full = roberta.score(population, batch)
    alone = roberta.score(population[2:3], batch)
    monkeypatch.setattr(roberta, "max_sequences", 2)
    chunked = roberta.score(population, batch)
    # not guaranteed bitwise (GEMM blocking depends on the row count), so a tight tolerance
    torch.testing.assert_close(alone[0], full[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
    short = roberta.score(population[:2], roberta.encode([EXAMPLES[2], EXAMPLES[0]]))
    torch.testing.assert_close(short[:, 0], full[:2, 2], rtol=0, atol=1e-5)


def test_generic_head_fallback_matches(roberta, monkeypatch):
    batch = roberta.encode(EXAMPLES)
    prompt = prompts(roberta, 2, 3, seed=5)
    fast = roberta.score(prompt, batch)
    monkeypatch.setattr(roberta, "_head", None)  # full-logits path for unknown architectures
    torch.testing.assert_close(roberta.score(prompt, batch), fast, rtol=0, atol=1e-5)


def test_errors_and_load_backend(bert_dir, bert):
    batch = bert.encode(EXAMPLES)
    before = bert.meter.snapshot()
    with pytest.raises(ValueError, match="prompt width 16 does not match"):
        bert.score(torch.zeros(1, 2, 16), batch)
    with pytest.raises(ValueError, match="batch is empty"):
        bert.score(torch.zeros(1, 2, 32), bert.encode([]))
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        bert.score(torch.zeros(1, 60, 32), batch)
    assert bert.meter.snapshot() == before
    meter = Meter(budget=3)
    box = load_backend("mlm", SST2, model_name_or_path=bert_dir, meter=meter, max_length=16, precision="bf16")
    assert isinstance(box, MaskedLMBlackBox) and box.meter is meter
    bf16 = box.score(prompts(box, 3, 2), box.encode(EXAMPLES[:1]))
    fp32 = bert.score(prompts(box, 3, 2), bert.encode(EXAMPLES[:1]))
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.05)
    assert meter.remaining == 0
