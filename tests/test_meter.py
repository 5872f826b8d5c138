"""Metering, budget and the label-only view, on a model-free fake backend."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.lm import BudgetExhausted, EncodedBatch, LabelOnly, Meter, MeterSnapshot, PromptBlackBox

TASK = Task(
    name="toy",
    label_names=("a", "b", "c"),
    encoder_verbalizers=("A.", "B.", "C."),
    mlm_template="{text} {mask}",
    mlm_verbalizers=("a", "b", "c"),
)


class FakeBox(PromptBlackBox):
    """Scores are a fixed function of the prompt sum and the text length; counts passes."""

    embed_dim = 4

    def __init__(self, meter: Meter | None = None, max_sequences: int = 512, length_bucket: int | None = 64) -> None:
        super().__init__(TASK, meter=meter, max_sequences=max_sequences, length_bucket=length_bucket)
        self.passes = 0

    def encode(self, examples: Sequence[Example], template=None) -> EncodedBatch:
        lengths = [len(ex.text.split()) for ex in examples]
        width = max(lengths)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        ids = mask * 7
        labels = torch.tensor([ex.label for ex in examples])
        return EncodedBatch(ids, mask, labels)

    def _score_chunk(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        self.passes += 1
        total = prompts.sum((1, 2))[:, None, None]
        length = batch.attention_mask.sum(1).float()[None, :, None]
        return torch.sin(total * torch.arange(1.0, 4.0) + length)


EXAMPLES = [Example("one two three", 0), Example("four", 1), Example("five six", 2)]


def test_meter_counts_calls_sequences_tokens():
    box = FakeBox()
    batch = box.encode(EXAMPLES)
    box.score(torch.randn(5, 2, 4), batch)
    snap = box.meter.snapshot()
    assert snap.calls == 5  # one call per prompt
    assert snap.sequences == 5 * 3
    assert snap.tokens == 5 * (6 + 2 * 3)  # text tokens + prompt slots, per prompt
    assert snap.queries == 1
    box.score(torch.randn(1, 0, 4), batch)
    assert box.meter.calls == 6 and box.meter.queries == 2 and box.meter.tokens == 60 + 6


def test_budget_refuses_before_any_work():
    box = FakeBox(meter=Meter(budget=7))
    batch = box.encode(EXAMPLES)
    box.score(torch.randn(4, 1, 4), batch)
    before, passes = box.meter.snapshot(), box.passes
    with pytest.raises(BudgetExhausted) as info:
        box.score(torch.randn(4, 1, 4), batch)
    assert (info.value.budget, info.value.used, info.value.requested) == (7, 4, 4)
    assert box.meter.snapshot() == before
    assert box.passes == passes  # the model never ran
    box.score(torch.randn(3, 1, 4), batch)  # exactly the remaining budget is fine
    assert box.meter.remaining == 0
    with pytest.raises(BudgetExhausted):
        box.score(torch.randn(1, 1, 4), batch)


def test_invalid_prompt_is_not_charged():
    box = FakeBox()
    batch = box.encode(EXAMPLES)
    with pytest.raises(ValueError, match="embedding size 4"):
        box.score(torch.randn(2, 1, 5), batch)
    with pytest.raises(ValueError, match="NaN or inf"):
        box.score(torch.full((2, 1, 4), float("nan")), batch)
    assert box.meter.calls == 0


def test_snapshot_restore_roundtrip():
    meter = Meter(budget=100)
    meter.charge(calls=3, sequences=30, tokens=300)
    snap = meter.snapshot()
    assert isinstance(snap, MeterSnapshot)
    assert snap.to_dict() == {"calls": 3, "sequences": 30, "tokens": 300, "queries": 1, "budget": 100}
    fresh = Meter(budget=100)
    fresh.restore(snap)
    assert fresh.snapshot() == snap
    other = Meter(budget=100)
    other.restore(snap.to_dict())
    assert other.remaining == 97


def test_chunking_matches_one_pass():
    big, small = FakeBox(), FakeBox(max_sequences=2)
    batch = big.encode(EXAMPLES)
    prompts = torch.randn(5, 2, 4)
    torch.testing.assert_close(small.score(prompts, batch), big.score(prompts, batch))
    assert small.passes > big.passes == 1
    assert small.meter.snapshot() == big.meter.snapshot()


def test_large_batches_run_sorted_by_length_in_trimmed_chunks():
    examples = [Example(" ".join(["w"] * n), n % 3) for n in (5, 1, 9, 2, 7, 3, 8, 4, 6)]
    plain, bucketed = FakeBox(length_bucket=None), FakeBox(max_sequences=6, length_bucket=2)
    chunks = []
    score_chunk = bucketed._score_chunk
    bucketed._score_chunk = lambda p, b: chunks.append((p.shape[0], len(b), b.input_ids.shape[1])) or score_chunk(p, b)
    batch = plain.encode(examples)
    prompts = torch.randn(7, 2, 4)
    torch.testing.assert_close(bucketed.score(prompts, batch), plain.score(prompts, batch), rtol=0, atol=0)  # batch order
    # sorted lengths 1..9 in chunks of 2 examples, each padded to its own longest; 6 // 2 = 3 prompts a pass
    assert [width for _, _, width in chunks[:5]] == [2, 4, 6, 8, 9]
    assert [(p, n) for p, n, _ in chunks[:5]] == [(3, 2)] * 4 + [(3, 1)] and [p for p, _, _ in chunks[-5:]] == [1] * 5
    assert len(chunks) == 15 and bucketed.meter.snapshot() == plain.meter.snapshot()
    within = FakeBox(length_bucket=9)  # a batch no larger than the bucket runs as it is
    within.score(prompts, batch)
    assert within.passes == 1
    with pytest.raises(ValueError, match="length_bucket must be None or an int >= 1, got 0"):
        FakeBox(length_bucket=0)


def test_label_only_returns_argmax_and_shares_meter():
    box = FakeBox(meter=Meter(budget=50))
    view = LabelOnly(box)
    batch = view.encode(EXAMPLES)
    prompts = torch.randn(6, 2, 4)
    labels = view.predict(prompts, batch)
    assert labels.shape == (6, 3) and labels.dtype == torch.int64
    assert torch.equal(labels, box.score(prompts, batch).argmax(-1))
    assert view.meter is box.meter and box.meter.calls == 12
    assert (view.num_classes, view.embed_dim, view.task) == (3, 4, TASK)


def test_label_only_exposes_no_scores():
    view = LabelOnly(FakeBox())
    assert not hasattr(view, "score")
    assert not hasattr(view, "_score_chunk")
    with pytest.raises(AttributeError):
        view.extra = 1  # __slots__: nothing can be attached
    assert isinstance(LabelOnly(view), LabelOnly)  # re-wrapping is allowed
    with pytest.raises(TypeError):
        LabelOnly(object())


def test_watching_listener_is_removed_on_error_and_not_called_for_refused_queries():
    meter, seen = Meter(budget=5), []
    with pytest.raises(BudgetExhausted):
        with meter.watching(lambda m: seen.append(m.calls)):
            meter.charge(calls=4, sequences=4, tokens=4)
            meter.charge(calls=4, sequences=4, tokens=4)  # refused: nothing recorded, nobody told
    meter.charge(calls=1, sequences=1, tokens=1)
    assert seen == [4] and meter.calls == 5


def test_capped_limits_a_stage_and_restores_the_budget_even_after_a_refusal():
    meter = Meter(budget=10)
    meter.charge(calls=2, sequences=2, tokens=2)
    with pytest.raises(BudgetExhausted):
        with meter.capped(5) as cap:
            assert cap == 7
            meter.charge(calls=4, sequences=4, tokens=4)
            meter.charge(calls=2, sequences=2, tokens=2)  # 8 > 7: refused
    assert (meter.budget, meter.calls) == (10, 6)
    with meter.capped(100) as cap:  # never beyond the overall budget
        assert cap == 10
    unlimited = Meter()
    with unlimited.capped(3) as cap:
        assert cap == 3 and not unlimited.can_afford(4)
    assert unlimited.budget is None
    with pytest.raises(ValueError, match="calls"):
        with unlimited.capped(-1):
            pass


def test_select_trims_only_the_named_per_token_extras():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    extras = {"token_type_ids": mask * 2, "features": torch.arange(12.0).reshape(3, 4)}  # a per-example [B, L] feature
    batch = EncodedBatch(mask * 7, mask, torch.tensor([0, 1, 2]), extras, token_extras=("token_type_ids",))
    part = batch.select(slice(0, 2))
    assert part.input_ids.shape == part.extras["token_type_ids"].shape == (2, 2)
    torch.testing.assert_close(part.extras["features"], extras["features"][:2])  # not cut to the padding
    assert part.token_extras == ("token_type_ids",)
    with pytest.raises(ValueError, match="token_extras names 'types', which is not in extras"):
        EncodedBatch(mask, mask, torch.zeros(3), extras, token_extras=("types",))
    with pytest.raises(ValueError, match=r"per-token extra 'features' has shape \(3, 3\), input_ids \(3, 4\)"):
        EncodedBatch(mask, mask, torch.zeros(3), {"features": torch.zeros(3, 3)}, token_extras=("features",))
