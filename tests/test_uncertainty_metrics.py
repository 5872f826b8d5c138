"""Uncertainty scores of ensembles, calibration, selective-prediction and OOD metrics.

Cross-checks against scikit-learn (roc_auc_score, roc_curve, calibration_curve) and an
independent numpy ECE written here in the style of Guo et al. (2017).
"""

import math

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from bayesprompt import metrics, uncertainty
from bayesprompt.predict import EnsemblePredictions, fit_vote_smoothing

LOG2 = math.log(2.0)


def _random_probs(samples, examples, classes, seed=0, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(samples, examples, classes, generator=g, dtype=torch.float64), -1)


def _reference_ece(confidence, correct, num_bins, lower=0.0, maximum=False):
    """Straightforward loop: bins (lo, hi] on linspace edges, first bin closed."""
    edges = np.linspace(lower, 1.0, num_bins + 1)
    gaps, shares = [], []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = (confidence <= hi) & ((confidence > lo) if b > 0 else True)
        if in_bin.any():
            gaps.append(abs(correct[in_bin].mean() - confidence[in_bin].mean()))
            shares.append(in_bin.mean())
    return max(gaps) if maximum else float(np.dot(gaps, shares))


# ------------------------------------------------------------------ uncertainty scores
def test_entropy_of_uniform_predictions_is_log_c_and_mi_zero():
    for classes in (2, 3, 7):
        uniform = torch.full((4, 5, classes), 1.0 / classes)
        scores = uncertainty.uncertainty_scores(uniform)
        torch.testing.assert_close(scores["predictive_entropy"], torch.full((5,), math.log(classes), dtype=torch.float64))
        torch.testing.assert_close(scores["expected_entropy"], torch.full((5,), math.log(classes), dtype=torch.float64))
        assert (scores["mutual_information"] == 0).all()
        torch.testing.assert_close(scores["one_minus_max_prob"], torch.full((5,), 1 - 1 / classes, dtype=torch.float64))


def test_mutual_information_identities_on_random_ensembles():
    probs = _random_probs(6, 40, 4)
    weights = torch.rand(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    total = uncertainty.predictive_entropy(probs, weights)
    aleatoric = uncertainty.expected_entropy(probs, weights)
    mi = uncertainty.mutual_information(probs, weights)
    assert (mi >= 0).all() and (mi > 1e-3).any()
    torch.testing.assert_close(mi, total - aleatoric)
    assert (total <= math.log(4) + 1e-12).all()
    # unnormalised weights are normalised
    torch.testing.assert_close(uncertainty.predictive_entropy(probs, 10 * weights), total)
    # all samples agree -> MI = 0, and H[mean] = E[H]
    agree = probs[:1].expand(5, -1, -1)
    assert torch.allclose(uncertainty.mutual_information(agree), torch.zeros(40, dtype=torch.float64), atol=1e-12)


def test_hand_computed_scores_and_weights():
    # example 0: samples disagree completely; example 1: one-hot agreement
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    scores = uncertainty.uncertainty_scores(probs)
    assert scores["predictive_entropy"].tolist() == pytest.approx([LOG2, 0.0])
    assert scores["expected_entropy"].tolist() == [0.0, 0.0]  # 0 log 0 = 0
    assert scores["mutual_information"].tolist() == pytest.approx([LOG2, 0.0])
    assert scores["one_minus_max_prob"].tolist() == pytest.approx([0.5, 0.0])
    assert scores["one_minus_vote_margin"].tolist() == pytest.approx([1.0, 0.0])
    # a zero-weight sample is ignored
    weighted = uncertainty.uncertainty_scores(probs, torch.tensor([1.0, 0.0]))
    assert weighted["predictive_entropy"].tolist() == [0.0, 0.0]
    assert weighted["one_minus_vote_margin"].tolist() == [0.0, 0.0]
    # H(0.25, 0.75) for weights (0.75, 0.25) on example 0
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(uncertainty.predictive_entropy(probs, torch.tensor([0.75, 0.25]))[0]) == pytest.approx(h)


def test_vote_margin_hand_computed_with_ties():
    # votes per example: ex0 -> classes (0, 0, 1, 2); ex1 -> (2, 1, 1, 2)
    probs = torch.tensor(
        [
            [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
            [[0.5, 0.4, 0.1], [0.3, 0.4, 0.3]],
            [[0.2, 0.7, 0.1], [0.1, 0.8, 0.1]],
            [[0.1, 0.1, 0.8], [0.0, 0.0, 1.0]],
        ],
        dtype=torch.float64,
    )
    assert uncertainty.vote_margin(probs).tolist() == pytest.approx([0.25, 0.0])
    assert uncertainty.vote_margin(probs, torch.tensor([0.1, 0.1, 0.2, 0.6])).tolist() == pytest.approx([0.6 - 0.2, 0.7 - 0.3])
    # an arg-max tie within a sample goes to the lowest class index
    tie = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])
    assert uncertainty.vote_margin(tie).tolist() == [1.0]


def test_uncertainty_input_errors():
    with pytest.raises(ValueError, match=r"\[S, N, C\]"):
        uncertainty.predictive_entropy(torch.ones(3, 2))
    with pytest.raises(ValueError, match="at least one sample"):
        uncertainty.predictive_entropy(torch.ones(0, 2, 2))
    with pytest.raises(ValueError, match="two classes"):
        uncertainty.vote_margin(torch.ones(2, 2, 1))
    with pytest.raises(ValueError, match=r"weights must be \[S=2\]"):
        uncertainty.expected_entropy(torch.full((2, 1, 2), 0.5), torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        uncertainty.mutual_information(torch.full((2, 1, 2), 0.5), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="NaN"):
        uncertainty.one_minus_max_prob(torch.tensor([[[float("nan"), 1.0]]]))


def test_ensemble_predictions_uncertainty_and_validation():
    probs = _random_probs(3, 5, 2)
    pred = EnsemblePredictions(probs, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    scores = pred.uncertainty()
    assert list(scores) == list(uncertainty.UNCERTAINTY_SCORES)
    torch.testing.assert_close(scores["one_minus_max_prob"], 1 - pred.mean().amax(-1))
    with pytest.raises(ValueError, match=r"labels must be \[N=5\]"):
        EnsemblePredictions(probs, torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"weights must be \[S=3\]"):
        EnsemblePredictions(probs, torch.ones(2), torch.zeros(5))
    for bad in ([1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("inf"), 1.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="finite and non-negative, with a positive sum"):
            EnsemblePredictions(probs, torch.tensor(bad), torch.zeros(5))


def test_ensemble_predictions_normalise_their_weights():
    """Weights on any scale give the same ensemble: mean, metrics and vote smoothing all see w / sum(w)."""
    probs = torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]]])
    raw = EnsemblePredictions(probs, torch.tensor([1.0, 3.0]), torch.tensor([0]))
    assert raw.weights.dtype == torch.float32 and raw.weights.tolist() == [0.25, 0.75]
    torch.testing.assert_close(raw.mean(), torch.tensor([[0.675, 0.325]]))
    assert metrics.nll(raw.mean(), raw.labels) == pytest.approx(-math.log(0.675))
    whole = EnsemblePredictions(probs, torch.tensor([1, 3]), torch.tensor([0]))  # integer counts
    assert whole.weights.dtype == torch.float64 and whole.weights.tolist() == [0.25, 0.75]
    onehot = torch.tensor([1.0, 0.0]).expand(32, 4, 2)
    votes = [EnsemblePredictions(onehot, w, torch.tensor([0, 0, 0, 1])) for w in (torch.ones(32), torch.full((32,), 1 / 32))]
    assert fit_vote_smoothing(votes[0]) == pytest.approx(fit_vote_smoothing(votes[1]))


# ------------------------------------------------------------------ calibration
def test_ece_and_mce_match_the_reference_on_random_data():
    rng = np.random.default_rng(0)
    for classes, num_bins in ((2, 10), (4, 10), (4, 15), (10, 7)):
        probs = torch.from_numpy(rng.dirichlet(np.full(classes, 0.5), size=300))
        labels = torch.from_numpy(rng.integers(0, classes, 300))
        confidence, prediction = probs.max(-1)
        correct = (prediction == labels).numpy().astype(float)
        conf = confidence.numpy()
        assert metrics.ece(probs, labels, num_bins) == pytest.approx(_reference_ece(conf, correct, num_bins), abs=1e-12)
        assert metrics.mce(probs, labels, num_bins) == pytest.approx(
            _reference_ece(conf, correct, num_bins, maximum=True), abs=1e-12
        )
    binary = torch.from_numpy(rng.dirichlet([1.0, 1.0], size=200))
    labels = torch.from_numpy(rng.integers(0, 2, 200))
    confidence, prediction = binary.max(-1)
    correct = (prediction == labels).numpy().astype(float)
    for num_bins in (5, 10):
        expected = _reference_ece(confidence.numpy(), correct, num_bins, lower=0.5)
        assert metrics.binary_ece(binary, labels, num_bins) == pytest.approx(expected, abs=1e-12)


def test_calibration_bins_match_sklearn_calibration_curve_including_edges():
    # decimal edges (0.3, 0.6, 0.7, 0.8), linspace's rounded edges (0.1 + 0.2 and
    # 0.7000000000000001 equal linspace(0, 1, 11)[3] and [7]) and 1.0; four classes so that
    # every confidence (> 0.25) is the top label
    confidence = np.array([0.3, 0.1 + 0.2, 0.6, 0.7, 0.7000000000000001, 0.8, 1.0, 0.55, 0.35, 0.95])
    assert np.linspace(0, 1, 11)[[3, 7]].tolist() == [0.1 + 0.2, 0.7000000000000001]
    correct = np.array([1, 0, 1, 0, 1, 1, 1, 0, 0, 1])
    probs = torch.from_numpy(np.c_[confidence, np.repeat((1 - confidence[:, None]) / 3, 3, axis=1)])
    labels = torch.from_numpy(np.where(correct == 1, 0, 1))
    bins = metrics.calibration_bins(probs, labels, 10)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10)
    filled = bins["count"] > 0
    np.testing.assert_array_equal(bins["accuracy"][filled], prob_true)
    np.testing.assert_allclose(bins["confidence"][filled], prob_pred, rtol=0, atol=1e-15)
    assert np.isnan(bins["accuracy"][~filled]).all() and np.isnan(bins["confidence"][~filled]).all()
    # values equal to an edge go to the bin below (right-closed); 1.0 to the last bin
    assert bins["count"].tolist() == [0, 0, 2, 1, 0, 2, 2, 1, 0, 2]
    assert metrics.ece(probs, labels) == pytest.approx(_reference_ece(confidence, correct, 10), abs=1e-15)
    # binary variant: edges 0.5, 0.6, ..., 1.0; 0.6 -> [0.5, 0.6], 0.7 -> (0.6, 0.7]
    binary = torch.tensor([[0.5, 0.5], [0.6, 0.4], [0.7, 0.3], [0.75, 0.25], [1.0, 0.0]], dtype=torch.float64)
    assert metrics.calibration_bins(binary, torch.zeros(5), 5, lower=0.5)["count"].tolist() == [2, 1, 1, 0, 1]


def test_calibration_curve_edges_for_multiclass_confidences_below_half():
    # sklearn's binning on the top-label (confidence, correct) pairs, confidences down to 1/3
    probs = torch.tensor(
        [[0.3 + 0.1 / 3, 1 / 3, 1 / 3], [0.4, 0.3, 0.3], [0.5, 0.25, 0.25], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 1, 0, 1, 2])
    confidence, prediction = probs.max(-1)
    correct = (prediction == labels).numpy()
    prob_true, prob_pred = calibration_curve(correct, confidence.numpy(), n_bins=10)
    bins = metrics.calibration_bins(probs, labels, 10)
    filled = bins["count"] > 0
    np.testing.assert_array_equal(bins["accuracy"][filled], prob_true)
    np.testing.assert_allclose(bins["confidence"][filled], prob_pred, atol=1e-15, rtol=0)
    # 0.4 and 0.5 are edges: right-closed bins put them in (0.3, 0.4] and (0.4, 0.5]
    assert bins["count"].tolist() == [0, 0, 0, 2, 1, 0, 1, 1, 0, 0]


def test_calibration_hand_computed_and_degenerate_cases():
    probs = torch.tensor([[0.9, 0.1], [0.35, 0.65], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # gaps: 0.9 right (0.1), 0.65 right (0.35), 0.6 wrong (0.6), 0.8 wrong (0.8)
    assert metrics.ece(probs, labels) == pytest.approx((0.1 + 0.35 + 0.6 + 0.8) / 4)
    assert metrics.mce(probs, labels) == pytest.approx(0.8)
    # binary, 5 bins over [0.5, 1]: [0.5, 0.6] {0.6 wrong}, (0.6, 0.7] {0.65 right}, (0.7, 0.8] {0.8 wrong}, (0.8, 0.9] {0.9 right}
    assert metrics.binary_ece(probs, labels, num_bins=5) == pytest.approx((0.6 + 0.35 + 0.8 + 0.1) / 4)
    # all predictions equal: a single bin; ECE = |confidence - accuracy|
    same = torch.tensor([[0.7, 0.3]] * 4, dtype=torch.float64)
    assert metrics.ece(same, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.05)
    assert metrics.mce(same, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.05)
    assert metrics.binary_ece(same, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.05)
    # perfectly confident and right
    assert metrics.ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0
    report = metrics.classification_report(probs, labels)
    assert report["mce"] == pytest.approx(0.8) and "ece_binary" in report


def test_calibration_input_errors():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    with pytest.raises(ValueError, match="two-class"):
        metrics.binary_ece(probs, torch.tensor([0]))
    with pytest.raises(ValueError, match="num_bins"):
        metrics.ece(probs, torch.tensor([0]), num_bins=0)
    with pytest.raises(ValueError, match="lower"):
        metrics.ece(probs, torch.tensor([0]), lower=1.0)
    with pytest.raises(ValueError, match="at least one example"):
        metrics.mce(torch.zeros(0, 2), torch.zeros(0))


# ------------------------------------------------------------------ misclassification / OOD
def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for size in (2, 7, 200):
        scores = np.round(rng.normal(size=size), 1)  # many ties
        positive = rng.random(size) < 0.4
        positive[:2] = [True, False]
        assert metrics.auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert metrics.auroc(torch.tensor([0.3, 0.3, 0.3]), torch.tensor([True, False, True])) == 0.5


def test_auroc_single_class_is_nan_and_input_errors():
    assert math.isnan(metrics.auroc([0.1, 0.5], [True, True]))
    assert math.isnan(metrics.misclassification_auroc([0.1, 0.5], [True, True]))  # no errors
    with pytest.raises(ValueError, match="same length"):
        metrics.auroc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="empty"):
        metrics.ood_auroc([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="boolean"):
        metrics.auroc([0.1, 0.2], [0, 2])


def test_misclassification_and_ood_auroc_orientation():
    # errors (positive) have higher uncertainty
    assert metrics.misclassification_auroc([0.9, 0.8, 0.1, 0.2], [False, False, True, True]) == 1.0
    assert metrics.misclassification_auroc([0.1, 0.2, 0.9, 0.8], [False, False, True, True]) == 0.0
    assert metrics.ood_auroc([0.1, 0.2], [0.5, 0.6]) == 1.0
    rng = np.random.default_rng(2)
    inside, outside = rng.normal(size=50), rng.normal(1.0, size=30)
    expected = roc_auc_score(np.r_[np.zeros(50), np.ones(30)], np.r_[inside, outside])
    assert metrics.ood_auroc(torch.from_numpy(inside), outside) == pytest.approx(expected)


def test_fpr_at_tpr_matches_sklearn_roc_curve():
    rng = np.random.default_rng(3)
    for size_in, size_ood, decimals in ((100, 60, 1), (37, 20, 3), (5, 3, 0)):
        inside = np.round(rng.normal(size=size_in), decimals)
        outside = np.round(rng.normal(0.8, size=size_ood), decimals)
        labels = np.r_[np.zeros(size_in), np.ones(size_ood)]
        fpr, tpr, _ = roc_curve(labels, np.r_[inside, outside], drop_intermediate=False)
        for level in (0.5, 0.8, 0.95, 1.0):
            expected = fpr[np.searchsorted(tpr, level, side="left")]
            assert metrics.fpr_at_tpr(inside, outside, level) == pytest.approx(expected, abs=1e-12)


def test_fpr_at_tpr_hand_computed():
    # 20 OOD, 19 of them above every ID score -> TPR 0.95 reached at FPR 0
    outside = np.r_[np.linspace(2, 3, 19), -1.0]
    inside = np.linspace(0, 1, 10)
    assert metrics.fpr_at_tpr(inside, outside) == 0.0
    assert metrics.fpr_at_tpr(inside, outside, tpr=1.0) == 1.0
    # all scores equal: everything is flagged at once
    assert metrics.fpr_at_tpr([0.5, 0.5], [0.5]) == 1.0
    with pytest.raises(ValueError, match="tpr"):
        metrics.fpr_at_tpr(inside, outside, tpr=0.0)


def test_risk_coverage_curve_hand_computed():
    confidence = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    correct = [1, 1, 0, 1, 0, 1, 1, 0, 0, 0]
    coverage, risk = metrics.risk_coverage_curve(confidence, correct)
    np.testing.assert_allclose(coverage, np.arange(1, 11) / 10)
    errors = np.cumsum([0, 0, 1, 0, 1, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(risk, errors / np.arange(1, 11))
    assert metrics.aurc(confidence, correct) == pytest.approx(float(np.mean(errors / np.arange(1, 11))))
    # coverage rounds up to whole examples, at least one
    coverage, risk = metrics.risk_coverage_curve([0.9, 0.2, 0.5], [False, True, True], [0.01, 0.5, 1.0])
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0]) and risk.tolist() == pytest.approx([1.0, 0.5, 1 / 3])


def test_risk_coverage_ties_are_taken_in_expectation_and_order_free():
    # three examples tied at 0.5 (one error among them); keep 2 of 4 -> 1 sure-right + 1 tied
    confidence = np.array([0.9, 0.5, 0.5, 0.5])
    correct = np.array([True, True, False, True])
    _, risk = metrics.risk_coverage_curve(confidence, correct, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, (1 / 3) / 2, (2 / 3) / 3, 1 / 4])
    rng = np.random.default_rng(4)
    conf = np.round(rng.random(50), 1)
    right = rng.random(50) < 0.7
    perm = rng.permutation(50)
    np.testing.assert_allclose(
        metrics.risk_coverage_curve(conf, right)[1], metrics.risk_coverage_curve(conf[perm], right[perm])[1]
    )
    # all predictions equally confident: the risk is the error rate at every coverage
    np.testing.assert_allclose(metrics.risk_coverage_curve(np.ones(50), right)[1], np.full(10, 1 - right.mean()))


def test_risk_coverage_input_errors():
    with pytest.raises(ValueError, match="coverages"):
        metrics.risk_coverage_curve([0.1], [True], [0.0])
    with pytest.raises(ValueError, match="coverages"):
        metrics.risk_coverage_curve([0.1], [True], [])
    with pytest.raises(ValueError, match="1-D"):
        metrics.aurc(np.ones((2, 2)), [True, False])


def test_selective_prediction_report():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])  # third prediction wrong (its confidence is the lowest)
    scores = {"entropy": uncertainty.predictive_entropy(probs.unsqueeze(0)), "bad": torch.tensor([0.9, 0.1, 0.0, 0.5])}
    report = metrics.selective_prediction_report(probs, labels, scores)
    assert report["accuracy"] == 0.75 and report["num_errors"] == 1 and report["num_examples"] == 4
    assert report["entropy/auroc"] == 1.0 and report["bad/auroc"] == 0.0
    # entropy keeps the error last: risks 0, 0, 0, 1/4 at coverages 0.1..1.0 (k = 1, 1, 2, 2, 2, 3, 3, 4, 4, 4)
    assert report["entropy/aurc"] == pytest.approx(3 * 0.25 / 10)
    default = metrics.selective_prediction_report(probs, labels)
    assert default["one_minus_max_prob/auroc"] == 1.0
    assert math.isnan(metrics.selective_prediction_report(probs, torch.tensor([0, 1, 0, 1]))["one_minus_max_prob/auroc"])
    with pytest.raises(ValueError, match="same length"):
        metrics.selective_prediction_report(probs, labels, {"short": [0.1, 0.2]})


def test_ood_report():
    inside = {"a": [0.1, 0.2, 0.3], "b": [0.9, 0.8, 0.7]}
    outside = {"a": [0.6, 0.7], "b": [0.1, 0.2]}
    report = metrics.ood_report(inside, outside)
    assert report == {"num_in": 3, "num_ood": 2, "a/auroc": 1.0, "a/fpr95": 0.0, "b/auroc": 0.0, "b/fpr95": 1.0}
    assert metrics.ood_report([0.1], [0.2], tpr=0.8) == {"num_in": 1, "num_ood": 1, "auroc": 1.0, "fpr80": 0.0}
    with pytest.raises(ValueError, match="same non-empty names"):
        metrics.ood_report({"a": [0.1]}, {"b": [0.2]})
    with pytest.raises(ValueError, match="score 'b' has"):
        metrics.ood_report({"a": [0.1], "b": [0.1, 0.2]}, {"a": [0.2], "b": [0.3]})
    with pytest.raises(TypeError, match="both be mappings"):
        metrics.ood_report({"a": [0.1]}, [0.2])
