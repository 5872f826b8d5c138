"""The embedded MiniLM sentence-encoder backend (real model, offline)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bayesprompt.data.task import Example, Task
from bayesprompt.lm import DEFAULT_SCALE, LabelOnly, SentenceEncoderBlackBox, fit_scale, load_backend
from bayesprompt.lm.sentence_encoder import zero_prompt_nll

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
    encoder_verbalizers=("Yes, that follows.", "No, that does not follow."),
    mlm_template="{text} ? {mask} , {text_pair}",
    mlm_verbalizers=("yes", "no"),
    is_pair=True,
)
EXAMPLES = [
    Example("a gorgeous , witty , seductive movie .", 1),
    Example("unflinchingly bleak and desperate", 0),
    Example("the plot is nothing but boilerplate clichés from start to finish , and the acting is flat", 0),
    Example("it 's a charming and often affecting journey .", 1),
]
# Scores of one prompt on one example are NOT bitwise identical across population sizes or
# chunkings in fp32 on CPU (the GEMM blocking depends on the number of rows; measured max
# |diff| ~5e-6 at scale 25-30), so these tests use the tightest tolerance that holds with
# a 10x margin.
POPULATION_ATOL = 5e-5
PADDING_ATOL = 1e-5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def box() -> SentenceEncoderBlackBox:
    return SentenceEncoderBlackBox(SST2)


@pytest.fixture(scope="session")
def batch(box):
    return box.encode(EXAMPLES)


def random_prompts(box, num, length, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    std = float(box.embedding_table().std())
    return torch.randn(num, length, box.embed_dim, generator=gen) * std * scale


def test_shapes_and_encoding(box, batch):
    assert box.embed_dim == 384 and box.scale == DEFAULT_SCALE
    assert batch.input_ids.shape[0] == 4 and batch.labels.tolist() == [1, 0, 0, 1]
    assert batch.input_ids[0, 0] == box.tokenizer.cls_token_id
    assert "token_type_ids" in batch.extras
    scores = box.score(random_prompts(box, 3, 5), batch)
    assert scores.shape == (3, 4, 2) and scores.dtype == torch.float32
    assert box.class_embeddings.shape == (2, 384)
    torch.testing.assert_close(box.class_embeddings.norm(dim=-1), torch.ones(2))
    assert scores.abs().max() <= box.scale + 1e-4  # scale * cosine


def test_embedding_table_is_not_a_query(box):
    before = box.meter.snapshot()
    table = box.embedding_table()
    assert table.shape == (30522, 384) and not table.requires_grad
    assert box.meter.snapshot() == before


def test_same_scores_whatever_the_population(box, batch, monkeypatch):
    prompts = random_prompts(box, 7, 5, seed=1)
    population = box.score(prompts, batch)
    alone = box.score(prompts[3:4], batch)
    torch.testing.assert_close(alone[0], population[3], rtol=0, atol=POPULATION_ATOL)
    monkeypatch.setattr(box, "max_sequences", 3)  # 1 example x 3 prompts per pass
    chunked = box.score(prompts, batch)
    torch.testing.assert_close(chunked, population, rtol=0, atol=POPULATION_ATOL)


def test_same_scores_whatever_the_padding(box):
    prompts = random_prompts(box, 2, 4, seed=2)
    target = Example("a gorgeous film", 1)
    short = box.score(prompts, box.encode([target, Example("bad", 0)]))
    long = box.score(prompts, box.encode([target, EXAMPLES[2]]))
    torch.testing.assert_close(short[:, 0], long[:, 0], rtol=0, atol=PADDING_ATOL)


def test_length_sorted_chunks_give_the_batch_order_scores(box, monkeypatch):
    examples = [Example(" ".join(["good"] * n), n % 2) for n in (9, 2, 14, 5, 1, 11, 7)]
    batch = box.encode(examples)
    prompts = random_prompts(box, 3, 4, seed=6)
    monkeypatch.setattr(box, "length_bucket", None)
    contiguous = box.score(prompts, batch)
    monkeypatch.setattr(box, "length_bucket", 2)
    sorted_chunks = box.score(prompts, batch)
    torch.testing.assert_close(sorted_chunks, contiguous, rtol=0, atol=PADDING_ATOL)


def test_errors_are_precise_and_uncharged(box, batch):
    before = box.meter.snapshot()
    with pytest.raises(ValueError, match="prompt width 10 does not match"):
        box.score(torch.zeros(1, 2, 10), batch)
    with pytest.raises(ValueError, match="batch is empty"):
        box.score(torch.zeros(1, 2, 384), box.encode([]))
    with pytest.raises(ValueError, match="NaN or inf"):
        box.score(torch.full((2, 1, 384), float("nan")), batch)
    bad = torch.zeros(3, 1, 384)
    bad[2, 0, 5] = float("inf")
    with pytest.raises(ValueError, match=r"prompt indices \[2\]"):
        box.score(bad, batch)
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        box.score(torch.zeros(1, 500, 384), batch)
    assert box.meter.snapshot() == before
    with pytest.raises(ValueError, match="labels must be ints in range"):
        box.encode([Example("x", 2)])
    with pytest.raises(ValueError, match="single-text but example 0 has a text_pair"):
        box.encode([Example("x", 0, "y")])


def test_prompt_changes_scores(box, batch):
    zero = box.score(torch.zeros(1, 0, 384), batch)
    prompted = box.score(random_prompts(box, 2, 5, seed=3), batch)
    assert (prompted - zero).abs().max() > 0.1
    assert (prompted[0] - prompted[1]).abs().max() > 0.1


def test_zero_prompt_is_sentence_transformers_mean_pooling(box, batch):
    """With n=0 the score is scale * cosine of ordinary sentence-transformers embeddings."""

    def embed(texts):
        enc = box.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = box.model(**enc).last_hidden_state
        weights = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    expected = box.scale * embed([ex.text for ex in EXAMPLES]) @ embed(list(SST2.encoder_verbalizers)).T
    scores = box.score(torch.zeros(1, 0, 384), batch)[0]
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)


def test_pooling_excludes_prompt_slots(box, batch):
    """Pooled = mean of the final states of the text tokens, computed by hand."""
    prompts = random_prompts(box, 1, 3, seed=4)
    ids, mask = batch.input_ids, batch.attention_mask
    words = box.model.get_input_embeddings()(ids)
    inputs = torch.cat([words[:, :1], prompts.expand(len(batch), -1, -1), words[:, 1:]], 1)
    attention = torch.cat([mask[:, :1], torch.ones(len(batch), 3, dtype=mask.dtype), mask[:, 1:]], 1)
    types = torch.cat([torch.zeros(len(batch), 3, dtype=torch.long), batch.extras["token_type_ids"]], 1)
    with torch.inference_mode():
        hidden = box.model(inputs_embeds=inputs, attention_mask=attention, token_type_ids=types).last_hidden_state
    text = torch.cat([hidden[:, :1], hidden[:, 4:]], 1)
    pooled = (text * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    expected = box.scale * F.normalize(pooled, dim=-1) @ box.class_embeddings.T
    torch.testing.assert_close(box.score(prompts, batch)[0], expected, rtol=0, atol=1e-4)


def test_pair_task_encodes_both_segments():
    pair_box = SentenceEncoderBlackBox(PAIR, max_length=16)
    batch = pair_box.encode([Example("a man sleeps", 0, "a person rests"), Example("hi " * 40, 1, "there")])
    types = batch.extras["token_type_ids"]
    assert batch.input_ids.shape[1] == 16 and types[0].sum() == 4  # "a person rests [SEP]"
    assert pair_box.score(torch.zeros(2, 3, 384), batch).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="pair task but example 0 has no text_pair"):
        pair_box.encode([Example("x", 0)])


def test_bf16_runs_and_is_close_to_fp32(box, batch, monkeypatch):
    prompts = random_prompts(box, 2, 4, seed=5)
    fp32 = box.score(prompts, batch)
    monkeypatch.setattr(box, "precision", "bf16")
    bf16 = box.score(prompts, batch)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.02 * box.scale)  # cosines within 0.02


def test_fit_scale_minimises_nll_with_one_call(box, batch):
    noisy = dataclasses.replace(batch, labels=torch.tensor([1, 0, 1, 1]))  # not separable
    before = box.meter.calls
    fitted = fit_scale(box, noisy)
    assert box.meter.calls == before + 1 and box.scale == DEFAULT_SCALE
    assert 1.0 < fitted < 300.0
    cosines = box.score(torch.zeros(1, 0, 384), batch)[0].double() / box.scale
    best = zero_prompt_nll(cosines, noisy.labels, fitted)
    assert best <= zero_prompt_nll(cosines, noisy.labels, 0.9 * fitted)
    assert best <= zero_prompt_nll(cosines, noisy.labels, 1.1 * fitted)
    # zero-prompt-separable data: the NLL keeps falling, the upper bound is returned
    assert fit_scale(box, batch, bounds=(1.0, 80.0)) == pytest.approx(80.0, rel=1e-3)
    with pytest.raises(ValueError, match="bounds"):
        fit_scale(box, batch, bounds=(5.0, 1.0))


def test_scale_validation_and_label_only(box, batch, monkeypatch):
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="scale must be a positive finite"):
            box.scale = bad
    monkeypatch.setattr(box, "scale", 50.0)
    prompts = random_prompts(box, 2, 2, seed=6)
    labels = LabelOnly(box).predict(prompts, batch)
    assert torch.equal(labels, box.score(prompts, batch).argmax(-1))


def test_load_backend_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown backend kind 'gpt'"):
        load_backend("gpt", SST2)
    with pytest.raises(ValueError, match="needs model_name_or_path"):
        load_backend("mlm", SST2)


def test_ood_inputs_render_with_their_own_template(box):
    """Pair inputs (RTE-style) can be scored by a single-sentence task's backend."""
    from bayesprompt.data import get_task

    rte = get_task("rte")
    pair = [Example("A man is sleeping.", 0, "Someone rests."), Example("It rains.", 1, "The sun shines.")]
    with pytest.raises(ValueError):
        box.encode(pair)  # the SST-2-style task has no text_pair
    batch = box.encode(pair, template=rte)
    scores = box.score(torch.zeros(1, 0, box.embed_dim), batch)
    assert scores.shape == (1, 2, box.num_classes)
    assert (batch.input_ids == box.tokenizer.sep_token_id).sum(-1).tolist() == [2, 2]
