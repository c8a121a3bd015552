"""Verification metrics: hand-worked pair sets, scikit-learn's ROC, plain loops, LFW k-fold, bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from deepmetric.distances import DISTANCES, as_ascending, pairwise
from deepmetric.evaluation.verification import (
    best_threshold, eer, kfold_accuracy, pair_distances, roc_auc, roc_curve, tar_at_far, verification_scores)

# Case A, used throughout: same pairs at 0.1 and 0.2, different pairs at 0.2 and 0.5 (a tie at 0.2).
A_D = np.array([0.1, 0.2, 0.2, 0.5])
A_S = np.array([True, True, False, False])


# ------------------------------------------------------------------ plain references

def loop_candidates(d):
    return [-math.inf] + sorted(set(float(v) for v in d))


def loop_rates(d, s, t):
    """(FAR, TAR) at threshold t by counting pairs one by one."""
    n_same = sum(1 for si in s if si)
    n_diff = len(s) - n_same
    ta = sum(1 for di, si in zip(d, s) if di <= t and si)
    fa = sum(1 for di, si in zip(d, s) if di <= t and not si)
    return fa / n_diff, ta / n_same


def loop_auc(d, s):
    """Mann-Whitney: P(same pair closer than different pair), ties counting 1/2."""
    same = [di for di, si in zip(d, s) if si]
    diff = [di for di, si in zip(d, s) if not si]
    wins = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a in same for b in diff)
    return wins / (len(same) * len(diff))


def loop_eer(d, s):
    """Walk the ROC polyline; on the first segment where FAR - FRR changes sign, solve FAR = FRR."""
    points = [loop_rates(d, s, t) for t in loop_candidates(d)]
    for (far0, tar0), (far1, tar1) in zip(points, points[1:]):
        g0, g1 = far0 - (1 - tar0), far1 - (1 - tar1)
        if g0 < 0 <= g1:
            alpha = -g0 / (g1 - g0)
            return far0 + alpha * (far1 - far0)
    raise AssertionError("no crossing")


def loop_tar_at_far(d, s, far):
    return max(tar for fa, tar in (loop_rates(d, s, t) for t in loop_candidates(d)) if fa <= far)


def loop_best(d, s):
    best = None
    for t in loop_candidates(d):
        acc = sum(1 for di, si in zip(d, s) if (di <= t) == bool(si)) / len(d)
        if best is None or acc > best[1]:
            best = (t, acc)
    return best


def random_pairs(n, seed, ties=True):
    rng = np.random.default_rng(seed)
    s = rng.random(n) < 0.5
    s[0], s[1] = True, False  # both kinds present
    d = rng.random(n) + 0.3 * ~s
    return (np.round(d, 1) if ties else d), s


# ------------------------------------------------------------------ ROC, AUC, EER, TAR@FAR

def test_roc_hand_worked():
    # thresholds -inf, 0.1, 0.2, 0.5; P = N = 2
    # 0.1 accepts the same pair 0.1 -> TAR 1/2, FAR 0; 0.2 accepts 0.1 (s), 0.2 (s), 0.2 (d) -> TAR 1, FAR 1/2
    far, tar, thresholds = roc_curve(A_D, A_S)
    assert far.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tar.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thresholds.tolist() == [-math.inf, 0.1, 0.2, 0.5]
    # AUC by trapezoids: 0 + 0.5 * (0.5 + 1) / 2 + 0.5 * 1 = 0.875; Mann-Whitney: (1 + 1 + 0.5 + 1) / 4
    assert roc_auc(A_D, A_S) == pytest.approx(0.875)
    # EER: FRR = 1 - TAR = 1, 0.5, 0, 0; FAR - FRR = -1, -0.5, 0.5, 1 changes sign on segment 1 -> 2:
    # FAR = 0.5 a, FRR = 0.5 - 0.5 a, equal at a = 1/2 -> EER = 0.25
    assert eer(A_D, A_S) == pytest.approx(0.25)
    # TAR@FAR: FAR <= 0 holds at -inf and 0.1 -> TAR 0.5; FAR <= 0.5 reaches 0.2 -> TAR 1
    assert tar_at_far(A_D, A_S, 0.0) == 0.5
    assert tar_at_far(A_D, A_S, 0.49) == 0.5
    assert tar_at_far(A_D, A_S, 0.5) == 1.0


def test_perfect_and_reversed_separation():
    d = np.array([0.1, 0.2, 0.7, 0.9])
    s = np.array([1, 1, 0, 0])
    # every same pair closer than every different pair: AUC 1, EER 0, TAR 1 already at FAR 0
    assert roc_auc(d, s) == 1.0 and eer(d, s) == 0.0 and tar_at_far(d, s, 0.0) == 1.0
    # reversed: ROC points (FAR, TAR) = (0,0) (0.5,0) (1,0) (1,0.5) (1,1), FRR = 1 - TAR = 1, 1, 1, 0.5, 0;
    # FAR - FRR = -1, -0.5, 0, ...: first >= 0 at the point (1, 0), where FAR = FRR = 1 -> EER 1; AUC 0
    assert roc_auc(d, 1 - s) == 0.0 and eer(d, 1 - s) == 1.0 and tar_at_far(d, 1 - s, 0.0) == 0.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_roc_equals_sklearn(seed, ties):
    d, s = random_pairs(60, seed, ties)
    fpr, tpr, thr = sk_roc_curve(s, -d, drop_intermediate=False)
    for dist in (d, torch.from_numpy(d), torch.from_numpy(d).float()):
        far, tar, thresholds = roc_curve(dist, torch.from_numpy(s))
        np.testing.assert_allclose(far.numpy(), fpr, rtol=0, atol=1e-12)
        np.testing.assert_allclose(tar.numpy(), tpr, rtol=0, atol=1e-12)
        np.testing.assert_allclose(thresholds.numpy(), -thr, rtol=0, atol=1e-6)
    assert roc_auc(d, s) == pytest.approx(roc_auc_score(s, -d), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 2**16), far=st.floats(0, 1))
def test_auc_eer_tar_at_far_equal_loops(n, seed, far):
    d, s = random_pairs(n, seed, ties=True)
    assert roc_auc(d, s) == pytest.approx(loop_auc(d, s), abs=1e-12)
    assert eer(d, s) == pytest.approx(loop_eer(d, s), abs=1e-12)
    assert tar_at_far(d, s, far) == pytest.approx(loop_tar_at_far(d, s, far), abs=1e-12)
    far_pts, tar_pts, thresholds = roc_curve(d, s)
    expected = [loop_rates(d, s, t) for t in loop_candidates(d)]
    assert far_pts.tolist() == pytest.approx([p[0] for p in expected])
    assert tar_pts.tolist() == pytest.approx([p[1] for p in expected])
    assert thresholds.tolist() == loop_candidates(d)
    # mirror symmetry: negating distances and swapping same/different reflects the ROC curve,
    # AUC and EER stay the same
    assert roc_auc(-d, ~s) == pytest.approx(roc_auc(d, s), abs=1e-12)
    assert eer(-d, ~s) == pytest.approx(eer(d, s), abs=1e-12)


# ------------------------------------------------------------------ thresholds and accuracy

def test_best_threshold_hand_worked():
    # correct pairs: -inf: 2 (the different ones); 0.1: 1 + 2 = 3; 0.2: 2 + 1 = 3; 0.5: 2 + 0 = 2
    # -> the smallest of the tied maxima, 0.1, with accuracy 3/4
    assert best_threshold(A_D, A_S) == (0.1, 0.75)
    # all same pairs: accepting everything is right -> threshold at the largest distance, accuracy 1
    assert best_threshold(np.array([0.3, 0.1]), np.array([1, 1])) == (0.3, 1.0)
    # all different pairs: accepting nothing -> -inf, accuracy 1
    assert best_threshold(np.array([0.3, 0.1]), np.array([0, 0])) == (-math.inf, 1.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_best_threshold_equals_loop(n, seed):
    rng = np.random.default_rng(seed)
    d, s = np.round(rng.random(n), 1), rng.random(n) < 0.5
    t, acc = best_threshold(d, s)
    t_loop, acc_loop = loop_best(d, s)
    assert t == t_loop and acc == pytest.approx(acc_loop, abs=1e-12)


def test_kfold_hand_worked():
    # 3 contiguous folds of 2 pairs: F0 (0.1 s, 0.9 d), F1 (0.2 s, 0.8 d), F2 (0.3 s, 0.25 d)
    # fold 0: train 0.2 s, 0.25 d, 0.3 s, 0.8 d; correct at -inf 2, 0.2 -> 3, 0.25 -> 2, 0.3 -> 3, 0.8 -> 2
    #         t = 0.2; test: 0.1 <= 0.2 accepted (s, right), 0.9 rejected (d, right) -> 1
    # fold 1: train 0.1 s, 0.25 d, 0.3 s, 0.9 d; best 3 first at t = 0.1; test 0.2 rejected (s, wrong),
    #         0.8 rejected (d, right) -> 1/2
    # fold 2: train 0.1 s, 0.2 s, 0.8 d, 0.9 d; t = 0.2 (4 correct); test 0.3 rejected (s, wrong),
    #         0.25 rejected (d, right) -> 1/2
    # mean 2/3; population std sqrt(((1/3)^2 + 2 (1/6)^2) / 3) = sqrt(1/18);
    # standard error sqrt((1/6) / 2) / sqrt(3) = 1/6
    d = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.25])
    s = np.array([1, 0, 1, 0, 1, 0])
    out = kfold_accuracy(d, s, n_folds=3)
    assert out["thresholds"].tolist() == [0.2, 0.1, 0.2]
    assert out["accuracies"].tolist() == [1.0, 0.5, 0.5]
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["accuracy_std"] == pytest.approx(math.sqrt(1 / 18))
    assert out["accuracy_se"] == pytest.approx(1 / 6)
    # the same folds given as ids: folds come in the order of the sorted ids (3 -> F1, 5 -> F2, 7 -> F0)
    out = kfold_accuracy(d, s, folds=np.array([7, 7, 3, 3, 5, 5]))
    assert out["accuracies"].tolist() == [0.5, 0.5, 1.0]
    assert out["accuracy"] == pytest.approx(2 / 3)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 25), k=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_kfold_equals_loop(n, k, seed):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    d, s = np.round(rng.random(n), 1), rng.random(n) < 0.5
    # contiguous blocks, the first n % k one pair longer (as np.array_split)
    blocks = np.array_split(np.arange(n), k)
    accs, ts = [], []
    for block in blocks:
        test = np.zeros(n, dtype=bool)
        test[block] = True
        t, _ = loop_best(d[~test], s[~test])
        ts.append(t)
        accs.append(sum(1 for di, si in zip(d[test], s[test]) if (di <= t) == si) / len(block))
    out = kfold_accuracy(d, s, n_folds=k)
    assert out["thresholds"].tolist() == ts
    assert out["accuracies"].tolist() == pytest.approx(accs)
    assert out["accuracy"] == pytest.approx(np.mean(accs))
    assert out["accuracy_std"] == pytest.approx(np.std(accs))
    assert out["accuracy_se"] == pytest.approx(np.std(accs, ddof=1) / math.sqrt(k))
    fold_ids = np.concatenate([np.full(len(b), i) for i, b in enumerate(blocks)])
    assert kfold_accuracy(d, s, folds=torch.from_numpy(fold_ids))["accuracies"].tolist() == pytest.approx(accs)


# ------------------------------------------------------------------ pair distances and the summary

@pytest.mark.parametrize("distance", DISTANCES)
def test_pair_distances_equal_the_diagonal_of_pairwise(distance):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 5, generator=gen, dtype=torch.float64)
    b[0] = 0.0  # a zero vector: cosine 0, cosine distance 1
    expected = torch.diagonal(as_ascending(pairwise(a, b, distance), distance))
    torch.testing.assert_close(pair_distances(a, b, distance), expected, rtol=0, atol=1e-10)


def test_pair_distances_hand_worked():
    a, b = torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 4.0], [2.0, 2.0]])
    # euclidean: sqrt(9 + 16) = 5, sqrt(1 + 1); squared: 25, 2; cosine: 1 - 0 = 1, 1 - 1 = 0; dot: -(0), -(4)
    assert pair_distances(a, b).tolist() == pytest.approx([5.0, math.sqrt(2)])
    assert pair_distances(a, b, "squared_euclidean").tolist() == pytest.approx([25.0, 2.0])
    assert pair_distances(a, b, "cosine").tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    assert pair_distances(a, b, "dot").tolist() == pytest.approx([0.0, -4.0])


def test_verification_scores_hand_worked():
    # euclidean distances 0.1, 0.2, 0.2, 0.5 with same = 1, 1, 0, 0: case A (AUC 0.875, EER 0.25,
    # TAR@FAR 0.001 = 0.5, TAR@FAR 0.5 = 1, threshold 0.1)
    # 2 folds: F0 (0.1 s, 0.2 s), F1 (0.2 d, 0.5 d).
    #   fold 0: train all different -> t = -inf, test both rejected, both same -> accuracy 0
    #   fold 1: train all same -> t = 0.2, test 0.2 accepted (d, wrong), 0.5 rejected (right) -> 1/2
    #   mean 1/4, std 1/4, standard error sqrt(2 (1/4)^2 / 1) / sqrt(2) = 1/4
    a = torch.zeros(4, 2, dtype=torch.float64)
    b = torch.tensor([[0.1, 0.0], [0.2, 0.0], [0.0, 0.2], [0.3, 0.4]], dtype=torch.float64)
    scores = verification_scores(a, b, torch.tensor([1, 1, 0, 0]), fars=(1e-3, 0.5), n_folds=2)
    assert scores == pytest.approx({"roc_auc": 0.875, "eer": 0.25, "tar_at_far_0.001": 0.5, "tar_at_far_0.5": 1.0,
                                    "accuracy": 0.25, "accuracy_std": 0.25, "accuracy_se": 0.25,
                                    "threshold": 0.1})


def test_verification_scores_compose_the_functions():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 4, generator=gen), torch.randn(40, 4, generator=gen)
    s = torch.arange(40) % 3 == 0
    b[s] = a[s] + 0.3 * torch.randn(int(s.sum()), 4, generator=gen)
    d = pair_distances(a, b, "cosine")
    scores = verification_scores(a, b, s, distance="cosine", fars=(0.1,), n_folds=4)
    folds = kfold_accuracy(d, s, n_folds=4)
    assert scores == {"roc_auc": roc_auc(d, s), "eer": eer(d, s), "tar_at_far_0.1": tar_at_far(d, s, 0.1),
                      "accuracy": folds["accuracy"], "accuracy_std": folds["accuracy_std"],
                      "accuracy_se": folds["accuracy_se"],
                      "threshold": best_threshold(d, s)[0]}
    assert 0.5 < scores["roc_auc"] <= 1.0  # same pairs were made close


# ------------------------------------------------------------------ undefined metrics and bad input

@pytest.mark.parametrize("fn", [roc_curve, roc_auc, eer, lambda d, s: tar_at_far(d, s, 0.1)])
def test_roc_metrics_need_both_kinds_of_pairs(fn):
    with pytest.raises(ValueError, match="needs both same and different pairs, got no different pair"):
        fn(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="needs both same and different pairs, got no same pair"):
        fn(np.array([0.1, 0.2]), np.array([0, 0]))


def test_verification_scores_need_both_kinds_of_pairs():
    with pytest.raises(ValueError, match="got no different pair"):
        verification_scores(torch.zeros(3, 2), torch.ones(3, 2), torch.ones(3, dtype=torch.bool), n_folds=2)


def test_kfold_with_one_kind_of_pairs_is_defined():
    # all same: every training set accepts up to its largest distance; fold 0 (0.1, 0.2) trains on 0.3, 0.4
    # -> t = 0.4, both accepted -> 1; fold 1 (0.3, 0.4) trains on 0.1, 0.2 -> t = 0.2, both rejected -> 0
    out = kfold_accuracy(np.array([0.1, 0.2, 0.3, 0.4]), np.ones(4, dtype=bool), n_folds=2)
    assert out["accuracies"].tolist() == [1.0, 0.0]


def test_bad_input():
    with pytest.raises(ValueError, match=r"distances: expected a non-empty 1-D array.*\(2, 2\)"):
        roc_curve(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="distances: expected a non-empty 1-D array"):
        best_threshold(np.zeros(0), np.zeros(0, dtype=bool))
    with pytest.raises(ValueError, match=r"distances: contains NaN or infinite values.*\[1\]"):
        roc_curve(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"is_same: expected shape \(3,\) to match distances, got \(2,\)"):
        roc_curve(np.zeros(3), np.array([1, 0]))
    with pytest.raises(ValueError, match="is_same: expected bool or 0/1 integers, got values"):
        roc_curve(np.zeros(2), np.array([1, 2]))
    with pytest.raises(TypeError, match="is_same: expected bool or 0/1 integers, got torch.float"):
        roc_curve(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(TypeError, match="distances: expected a torch.Tensor or numpy array, got list"):
        roc_curve([0.1, 0.2], np.array([1, 0]))
    with pytest.raises(TypeError, match="distances: expected real distances"):
        roc_curve(np.array([True, False]), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"far: expected a number in \[0, 1\], got 1.5"):
        tar_at_far(A_D, A_S, 1.5)
    with pytest.raises(ValueError, match=r"n_folds: expected an integer in \[2, 4\]"):
        kfold_accuracy(A_D, A_S, n_folds=5)
    with pytest.raises(ValueError, match=r"n_folds: expected an integer in \[2, 4\]"):
        kfold_accuracy(A_D, A_S, n_folds=1)
    with pytest.raises(ValueError, match="folds: expected at least two distinct fold ids"):
        kfold_accuracy(A_D, A_S, folds=np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"folds: expected shape \(4,\)"):
        kfold_accuracy(A_D, A_S, folds=np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="folds: expected integer fold ids"):
        kfold_accuracy(A_D, A_S, folds=np.zeros(4))
    with pytest.raises(ValueError, match=r"b: expected shape \(3, 2\) to match a"):
        pair_distances(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="distance: unknown name 'hamming'"):
        pair_distances(torch.zeros(3, 2), torch.zeros(3, 2), "hamming")
    with pytest.raises(ValueError, match="a: contains NaN"):
        pair_distances(torch.tensor([[float("nan")]]), torch.zeros(1, 1))


def test_half_precision_embeddings_are_measured_in_float32():
    # float16 arithmetic rounds distances of nearby pairs together (ties that move TAR@FAR), overflows
    # the squares of norm-200 vectors, and makes a zero vector's cosine NaN instead of 0
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(2000, 64, generator=g), dim=1).half()
    b = torch.nn.functional.normalize(a.float() + 0.3 * torch.randn(2000, 64, generator=g), dim=1).half()
    for distance in DISTANCES:
        got = pair_distances(a, b, distance)
        assert got.dtype == torch.float32
        assert torch.equal(got, pair_distances(a.float(), b.float(), distance))
    assert pair_distances(a, b).unique().numel() > 1900  # float16 arithmetic gave about 250 values
    big = torch.full((1, 4), 100.0, dtype=torch.float16)
    assert pair_distances(big, -big, "squared_euclidean").item() == 160000.0
    zero = torch.zeros(1, 4, dtype=torch.bfloat16)
    assert pair_distances(zero, torch.ones(1, 4, dtype=torch.bfloat16), "cosine").item() == 1.0


def test_fars_are_checked():
    a, b, s = torch.zeros(4, 2), torch.tensor([[0.0, 1], [0, 2], [0, 3], [0, 4]]), torch.tensor([1, 0, 1, 0])
    with pytest.raises(TypeError, match=r"fars: expected a sequence of FARs in \[0, 1\].*got 0.001"):
        verification_scores(a, b, s, fars=0.001, n_folds=2)
    with pytest.raises(ValueError, match="fars: expected numbers in"):
        verification_scores(a, b, s, fars=["0.1"], n_folds=2)
    with pytest.raises(ValueError, match=r"fars: expected numbers in \[0, 1\], got 2"):  # it said "far:"
        verification_scores(a, b, s, fars=(2,), n_folds=2)
    # two values that print alike would share the key tar_at_far_0.001, one overwriting the other
    with pytest.raises(ValueError, match="fars: .* share a key"):
        verification_scores(a, b, s, fars=(1e-3, 1.0000001e-3), n_folds=2)
    assert set(verification_scores(a, b, s, fars=np.array([0.5, 1.0]), n_folds=2)) >= {
        "tar_at_far_0.5", "tar_at_far_1"}


def test_folds_of_one_kind_are_warned_about():
    # 60 pairs, half same, sorted: folds of 15 of one kind, chance 2 * 0.5^15 < 0.001 each
    d, sorted_same = np.arange(60) / 60.0, np.repeat([1, 0], 30)
    with pytest.warns(UserWarning,
                      match=r"is_same: folds \[0, 1, 2, 3\] of the 4 contiguous folds hold only") as caught:
        kfold_accuracy(d, sorted_same, n_folds=4)
    assert caught[0].filename == __file__  # the caller's line, not the library's
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfold_accuracy(d, np.tile([1, 0], 30), n_folds=4)  # each fold holds both
        kfold_accuracy(d[:8], np.repeat([1, 0], 4), n_folds=2)  # folds of 4: chance 2 * 0.5^4, not unlikely
        kfold_accuracy(d, np.ones(60, dtype=bool), n_folds=4)  # one kind overall: nothing to reorder
        kfold_accuracy(d, sorted_same, folds=np.repeat([0, 1], 30))  # the caller's own folds
