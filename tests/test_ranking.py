"""Ranking metrics of deepmetric.evaluation.ranking: hand-worked cases (ties, empty relevance, k beyond
the results), plain loops on random inputs, YouTube-8M's GAP transcribed, bad input."""
import doctest
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmetric.evaluation import ranking
from deepmetric.labels import same_mask, shared_levels

C3 = 1 / math.log2(3)  # NDCG discount at rank 2
E5 = 1 / math.log2(5)  # NDCG discount at rank 4

T, F = True, False


def test_docstring_examples_run():
    import deepmetric.evaluation

    result = doctest.testmod(ranking)
    assert result.attempted >= 6 and result.failed == 0
    result = doctest.testmod(deepmetric.evaluation)
    assert result.attempted >= 1 and result.failed == 0


# ------------------------------------------------------------------ hand-worked

def test_map_at_k_hand_worked():
    rel = torch.tensor([[T, F, T, F], [F, T, F, F], [F, F, F, F]])
    n_rel = torch.tensor([2, 3, 1])
    # q0 (R=2): k=1: P(1)/min(1,2) = 1; k=2: 1/min(2,2) = 1/2; k=3, 4: (1 + 2/3)/2 = 5/6
    # q1 (R=3): k=1: 0; k=2: P(2)/min(2,3) = (1/2)/2 = 1/4; k=4: (1/2)/3 = 1/6
    # q2 (R=1, nothing found): 0 at every k
    assert ranking.map_at_k(rel, 1, n_rel).tolist() == [1.0, 0.0, 0.0]
    assert ranking.map_at_k(rel, 2, n_rel).tolist() == pytest.approx([1 / 2, 1 / 4, 0.0])
    assert ranking.map_at_k(rel, 3, n_rel).tolist() == pytest.approx([5 / 6, 1 / 6, 0.0])
    assert ranking.map_at_k(rel, 4, n_rel).tolist() == pytest.approx([5 / 6, 1 / 6, 0.0])
    # R = 0: undefined (NaN), the caller excludes the query
    assert math.isnan(ranking.map_at_k(rel[2:], 4, torch.tensor([0]))[0])
    # numpy integers are integers (e.g. a k read from an array)
    assert ranking.map_at_k(rel, np.int64(2), n_rel).tolist() == pytest.approx([1 / 2, 1 / 4, 0.0])


def test_average_precision_hand_worked():
    rel = torch.tensor([[T, F, T, F, F], [F, F, F, F, T], [F, F, F, F, F]])
    # q0: (P(1) + P(3))/2 = (1 + 2/3)/2 = 5/6; q1: P(5)/1 = 1/5; q2: R = 0 -> NaN
    ap = ranking.average_precision(rel, torch.tensor([2, 1, 0]))
    assert ap[:2].tolist() == pytest.approx([5 / 6, 1 / 5]) and math.isnan(ap[2])
    # the full-ranking AP needs every relevant item in rel
    with pytest.raises(ValueError, match="shows 1 of its 2 relevant items"):
        ranking.average_precision(rel[1:2], torch.tensor([2]))


def test_reciprocal_rank_hand_worked():
    rel = torch.tensor([[F, F, T], [T, T, F], [F, F, F], [F, T, T]])
    # first relevant at rank 3, 1, none, 2
    assert ranking.reciprocal_rank(rel).tolist() == [1 / 3, 1.0, 0.0, 1 / 2]


def test_ideal_gains_hand_worked():
    # binary: R = 2 -> gains 1, 1, then 0; R = 0 -> all 0
    assert ranking.ideal_gains(torch.tensor([[2], [0]]), 4).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    # graded: 3 items have gain > 0 (share level 0), 2 of them gain > 1 (share level 1 too), 1 gain > 2
    assert ranking.ideal_gains(torch.tensor([[3, 2, 1]]), 5).tolist() == [[3, 2, 1, 0, 0]]
    with pytest.raises(ValueError, match="non-increasing"):
        ranking.ideal_gains(torch.tensor([[1, 2]]), 3)


def test_ndcg_at_k_hand_worked():
    # binary, rel F T T F with R = 2: ideal 1 1 0 0
    rel = torch.tensor([[F, T, T, F]])
    ideal = ranking.ideal_gains(torch.tensor([[2]]), 4)
    # @1: DCG 0 -> 0;  @2: DCG = 1/log2(3), IDCG = 1 + 1/log2(3)
    # @4: DCG = 1/log2(3) + 1/log2(4) = C3 + 1/2, IDCG = 1 + C3
    assert ranking.ndcg_at_k(rel, 1, ideal).tolist() == [0.0]
    assert ranking.ndcg_at_k(rel, 2, ideal).item() == pytest.approx(C3 / (1 + C3))
    assert ranking.ndcg_at_k(rel, 4, ideal).item() == pytest.approx((C3 + 0.5) / (1 + C3))
    # graded gains 1 2 0 against ideal 2 2 1: DCG@3 = (2^1 - 1) + (2^2 - 1) C3 + 0 = 1 + 3 C3;
    # IDCG@3 = 3 + 3 C3 + (2^1 - 1)/log2(4) = 3.5 + 3 C3
    gains = torch.tensor([[1.0, 2.0, 0.0]])
    ideal = torch.tensor([[2.0, 2.0, 1.0]])
    assert ranking.ndcg_at_k(gains, 3, ideal).item() == pytest.approx((1 + 3 * C3) / (3.5 + 3 * C3))
    # ties between equal gains do not matter; a perfect ranking scores 1
    assert ranking.ndcg_at_k(ideal, 3, ideal).item() == pytest.approx(1.0)
    # nothing relevant: IDCG = 0 -> NaN
    assert math.isnan(ranking.ndcg_at_k(torch.zeros(1, 2), 2, torch.zeros(1, 2))[0])


def test_metrics_with_padding_and_k_beyond_the_relevant():
    # a query that could retrieve only 2 items, searched at depth 4: padded slots are not relevant
    rel = torch.tensor([[T, T, F, F]])
    n_rel = torch.tensor([2])
    assert ranking.precision_at_k(rel, 4).tolist() == [0.5]        # 2/4
    assert ranking.map_at_k(rel, 4, n_rel).tolist() == [1.0]       # (1 + 1)/min(4, 2)
    assert ranking.ndcg_at_k(rel, 4, ranking.ideal_gains(n_rel.unsqueeze(1), 4)).tolist() == [1.0]


def gap_example():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    targets = torch.tensor([[T, F, F], [F, F, T]])
    return scores, targets


def test_gap_hand_worked():
    scores, targets = gap_example()
    # top 2 per item: (0.9 T), (0.5 F) | (0.8 F), (0.7 T); pooled: 0.9 T, 0.8 F, 0.7 T, 0.5 F
    # GAP = (P(1) + P(3)) / 2 positives = (1 + 2/3)/2 = 5/6
    assert ranking.gap_at_k(scores, targets, k=2) == pytest.approx(5 / 6)
    # a positive outside every top 2 (item 1, class 0, score 0.2) still counts: (1 + 2/3)/3 = 5/9
    targets[1, 0] = True
    assert ranking.gap_at_k(scores, targets, k=2) == pytest.approx(5 / 9)
    # k beyond the classes keeps all 3: 0.9 T, 0.8 F, 0.7 T, 0.5 F, 0.2 T, 0.1 F -> (1 + 2/3 + 3/5)/3
    assert ranking.gap_at_k(scores, targets, k=10) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # k = 1: 0.9 T, 0.8 F -> 1/3
    assert ranking.gap_at_k(scores, targets, k=1) == pytest.approx(1 / 3)
    assert ranking.gap_at_k(scores, targets, k=np.int32(1)) == pytest.approx(1 / 3)
    # no positive at all: 0 (as YouTube-8M)
    assert ranking.gap_at_k(scores, torch.zeros(2, 3, dtype=torch.bool)) == 0.0
    # numpy, and 0/1 numbers, as YouTube-8M's calculate_gap takes them
    for as_numbers in (targets.numpy().astype(np.int64), targets.numpy().astype(np.float32)):
        assert ranking.gap_at_k(scores.numpy(), as_numbers, k=2) == pytest.approx(5 / 9)


def test_gap_ties_go_to_the_earlier_item_then_class():
    # item 0 scores 0.5, 0.5 (classes 0 F, 1 T): the tie keeps class 0; item 1 keeps class 0 (0.5, T).
    # pooled 0.5 (item 0, F), 0.5 (item 1, T): GAP = P(2)/2 positives = (1/2)/2 = 1/4
    scores = torch.tensor([[0.5, 0.5], [0.5, 0.1]])
    targets = torch.tensor([[F, T], [T, F]])
    assert ranking.gap_at_k(scores, targets, k=1) == pytest.approx(1 / 4)


def youtube8m_gap(predictions, actuals, top_k=20):
    """A direct transcription of YouTube-8M's eval_util.calculate_gap with top_k_by_class /
    top_k_triplets and AveragePrecisionCalculator (top_n=None: the heap keeps every pair, and
    peek_ap_at_n calls ap_at_n with n=None and the accumulated number of positives)."""
    k = min(top_k, predictions.shape[1])
    num_classes = predictions.shape[1]
    triplets = []
    for video in range(predictions.shape[0]):
        indices = np.argpartition(predictions[video], -k)[-k:]
        triplets.extend((index, predictions[video][index], actuals[video][index]) for index in indices)
    out_predictions = [[] for _ in range(num_classes)]
    out_labels = [[] for _ in range(num_classes)]
    for index, prediction, label in triplets:
        out_predictions[index].append(prediction)
        out_labels[index].append(label)
    num_positives = sum(np.sum(actuals[:, i]) for i in range(num_classes))
    flat_predictions = np.array([p for sub in out_predictions for p in sub])
    flat_labels = np.array([a for sub in out_labels for a in sub])
    # ap_at_n(predictions, actuals, n=None, total_num_positives=num_positives)
    random.seed(0)
    shuffle = random.sample(range(len(flat_predictions)), len(flat_predictions))
    flat_predictions, flat_labels = flat_predictions[shuffle], flat_labels[shuffle]
    order = sorted(range(len(flat_predictions)), key=lambda i: flat_predictions[i], reverse=True)
    if num_positives == 0:
        return 0
    delta_recall = 1.0 / num_positives
    ap, poscount = 0.0, 0.0
    for i in range(len(order)):
        if flat_labels[order[i]] > 0:
            poscount += 1
            ap += poscount / (i + 1) * delta_recall
    return ap


@pytest.mark.parametrize("n,c,k,p", [(50, 30, 20, 0.1), (40, 7, 20, 0.3), (64, 100, 5, 0.02), (1, 4, 2, 0.5)])
def test_gap_equals_youtube8m_transcription(n, c, k, p):
    gen = torch.Generator().manual_seed(n + c)
    scores = torch.rand(n, c, generator=gen, dtype=torch.float64)
    targets = torch.rand(n, c, generator=gen) < p
    expected = youtube8m_gap(scores.numpy(), targets.numpy(), top_k=k)
    assert ranking.gap_at_k(scores, targets, k=k) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ plain loops on random inputs

@st.composite
def ranked_lists(draw):
    q = draw(st.integers(1, 5))
    k = draw(st.integers(1, 7))
    rel = draw(st.lists(st.lists(st.booleans(), min_size=k, max_size=k), min_size=q, max_size=q))
    n_rel = [draw(st.integers(max(1, sum(row)), k + 3)) for row in rel]  # R may exceed the depth
    return rel, n_rel


def loop_ap(row, r, k):
    ap, hits = 0.0, 0
    for i in range(1, k + 1):
        if row[i - 1]:
            hits += 1
            ap += hits / i
    return ap / r


@settings(max_examples=60, deadline=None)
@given(ranked_lists())
def test_map_at_k_mrr_and_binary_ndcg_equal_plain_loops(case):
    rel_list, n_list = case
    rel, n_rel = torch.tensor(rel_list), torch.tensor(n_list)
    depth = rel.shape[1]
    for kk in range(1, depth + 1):
        ideal = ranking.ideal_gains(n_rel.unsqueeze(1), kk)
        got_map = ranking.map_at_k(rel, kk, n_rel)
        got_ndcg = ranking.ndcg_at_k(rel, kk, ideal)
        for j, (row, r) in enumerate(zip(rel_list, n_list)):
            assert got_map[j] == pytest.approx(loop_ap(row, min(kk, r), kk))
            dcg = sum(1 / math.log2(i + 2) for i in range(kk) if row[i])
            idcg = sum(1 / math.log2(i + 2) for i in range(min(kk, r)))
            assert got_ndcg[j] == pytest.approx(dcg / idcg)
    for j, row in enumerate(rel_list):
        first = next((i + 1 for i, hit in enumerate(row) if hit), None)
        assert ranking.reciprocal_rank(rel)[j] == (0.0 if first is None else 1 / first)
    complete = torch.tensor([sum(row) for row in rel_list])
    for j, row in enumerate(rel_list):
        if complete[j] > 0:
            assert ranking.average_precision(rel, complete)[j] == pytest.approx(loop_ap(row, sum(row), depth))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 10_000))
def test_graded_ndcg_equals_plain_loop(q, k, seed):
    gen = torch.Generator().manual_seed(seed)
    gains = torch.randint(0, 4, (q, k), generator=gen).double()
    pool = torch.cat([gains, torch.randint(0, 4, (q, 3), generator=gen).double()], dim=1)
    ideal = pool.sort(dim=1, descending=True).values  # the best gains the query could get
    got = ranking.ndcg_at_k(gains, k, ideal)
    for j in range(q):
        dcg = sum((2 ** float(gains[j, i]) - 1) / math.log2(i + 2) for i in range(k))
        idcg = sum((2 ** float(ideal[j, i]) - 1) / math.log2(i + 2) for i in range(k))
        if idcg == 0:
            assert math.isnan(got[j])
        else:
            assert got[j] == pytest.approx(dcg / idcg)


def test_graded_relevance_equals_shared_levels():
    gen = torch.Generator().manual_seed(1)
    ql, gl = torch.randint(0, 2, (13, 3), generator=gen), torch.randint(0, 2, (17, 3), generator=gen)
    idx = torch.randint(-1, 17, (13, 6), generator=gen)
    expected = shared_levels(ql, gl).gather(1, idx.clamp_min(0)) * (idx >= 0)
    assert torch.equal(ranking.graded_relevance(idx, ql, gl), expected)
    # flat labels: a one-level hierarchy
    fq, fg = ql[:, 0], gl[:, 0]
    expected = (same_mask(fq, fg).gather(1, idx.clamp_min(0)) & (idx >= 0)).long()
    assert torch.equal(ranking.graded_relevance(idx, fq, fg), expected)
    with pytest.raises(ValueError, match="multi-label"):
        ranking.graded_relevance(idx, ql.bool(), gl.bool())


def near(q, r):
    """A user relevance: labels within 1 of each other."""
    return (r - q.unsqueeze(1)).abs() <= 1


def test_relevance_fn_equals_a_full_matrix():
    gen = torch.Generator().manual_seed(2)
    ql, gl = torch.randint(0, 9, (11,), generator=gen), torch.randint(0, 9, (15,), generator=gen)
    full = (ql.unsqueeze(1) - gl.unsqueeze(0)).abs() <= 1
    idx = torch.randint(-1, 15, (11, 5), generator=gen)
    assert torch.equal(ranking.relevance(idx, ql, gl, near), full.gather(1, idx.clamp_min(0)) & (idx >= 0))
    assert torch.equal(ranking.count_relevant(ql, gl, relevance_fn=near), full.sum(1))
    qg, gg = torch.randint(0, 3, (11,), generator=gen), torch.randint(0, 3, (15,), generator=gen)
    keep = qg.unsqueeze(1) != gg.unsqueeze(0)
    assert torch.equal(ranking.count_relevant(ql, gl, False, qg, gg, near), (full & keep).sum(1))
    self_full = (gl.unsqueeze(1) - gl.unsqueeze(0)).abs() <= 1
    assert torch.equal(ranking.count_relevant(gl, gl, True, relevance_fn=near),
                       (self_full & ~torch.eye(15, dtype=torch.bool)).sum(1))
    # multi-label with a stricter relevance: at least two labels shared
    mq, mg = torch.rand(11, 5, generator=gen) < 0.5, torch.rand(15, 5, generator=gen) < 0.5

    def two_shared(q, r):
        return (r & q.unsqueeze(1)).sum(-1) >= 2

    full = (mq.float() @ mg.float().T) >= 2
    assert torch.equal(ranking.relevance(idx, mq, mg, two_shared), full.gather(1, idx.clamp_min(0)) & (idx >= 0))
    assert torch.equal(ranking.count_relevant(mq, mg, relevance_fn=two_shared), full.sum(1))


@pytest.mark.parametrize("n_labels", [1, 7, 8, 9, 64, 130])
def test_multilabel_relevance_and_counts_equal_plain_loops(n_labels):
    # the labels are packed into bytes and only the query's non-zero bytes are tested: label counts
    # on both sides of a byte's edge, items without any label, padding, self and group exclusion
    gen = torch.Generator().manual_seed(n_labels)
    q = torch.rand(13, n_labels, generator=gen) < 2.0 / n_labels
    g = torch.cat([q, torch.rand(9, n_labels, generator=gen) < 2.0 / n_labels])
    q[0], g[5] = False, False
    idx = torch.randint(-1, len(g), (len(q), 7), generator=gen)
    groups = torch.randint(0, 4, (len(g),), generator=gen)

    def shared(a, b):
        return any(bool(a[c]) and bool(b[c]) for c in range(n_labels))

    expected = [[j >= 0 and shared(q[i], g[j]) for j in idx[i].tolist()] for i in range(len(q))]
    assert ranking.relevance(idx, q, g).tolist() == expected
    for exclude_self, grouped in [(False, False), (True, False), (True, True)]:
        qg, gg = (groups[:len(q)], groups) if grouped else (None, None)
        counts = [sum(shared(q[i], g[j]) for j in range(len(g))
                      if not (exclude_self and j == i) and not (grouped and groups[j] == groups[i]))
                  for i in range(len(q))]
        assert ranking.count_relevant(q, g, exclude_self, qg, gg).tolist() == counts
    with pytest.raises(ValueError, match="gallery_labels: expected 3 label columns like the queries, got 4"):
        ranking.count_relevant(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool))
    # the compiled kernels read what they are given: shapes are checked first (numba checks no bounds)
    with pytest.raises(ValueError, match=r"query_groups: expected shape \(13,\), got \(2,\)"):
        ranking.count_relevant(q, g, False, groups[:2], groups)
    with pytest.raises(TypeError, match="gallery_labels: expected \\(G, C\\) bool multi-label labels like the queries"):
        ranking.count_relevant(q, g.float())


# ------------------------------------------------------------------ bad input

def test_errors_name_the_argument():
    rel = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="n_relevant: query 0 has 1 relevant results"):
        ranking.map_at_k(torch.tensor([[T, F, F]]), 2, torch.tensor([0]))
    with pytest.raises(ValueError, match="k: rel has only 3 columns"):
        ranking.map_at_k(rel, 4, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="rel: expected a bool"):
        ranking.reciprocal_rank(rel.long())
    with pytest.raises(ValueError, match="k: gains has only 3 columns"):
        ranking.ndcg_at_k(rel, 4, torch.ones(2, 4))
    with pytest.raises(ValueError, match="k: ideal_gains has only 2 columns"):
        ranking.ndcg_at_k(rel, 3, torch.ones(2, 2))
    with pytest.raises(ValueError, match="ideal_gains: expected each row sorted"):
        ranking.ndcg_at_k(rel, 2, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="gains: expected finite gains >= 0"):
        ranking.ndcg_at_k(-torch.ones(2, 3), 2, torch.ones(2, 2))
    with pytest.raises(ValueError, match="ideal_gains: expected 2 rows"):
        ranking.ndcg_at_k(rel, 2, torch.ones(3, 2))
    with pytest.raises(TypeError, match="counts: expected integer"):
        ranking.ideal_gains(torch.ones(2, 1), 2)
    scores, targets = gap_example()
    with pytest.raises(ValueError, match="targets: expected bool or 0/1 values, got torch.float32 values other"):
        ranking.gap_at_k(scores, targets.float() * 2)
    with pytest.raises(TypeError, match="targets: expected a torch.Tensor or numpy array, got list"):
        ranking.gap_at_k(scores, targets.tolist())
    with pytest.raises(ValueError, match=r"targets: expected shape \(2, 3\)"):
        ranking.gap_at_k(scores, targets[:1])
    with pytest.raises(TypeError, match=r"scores: expected floating scores of shape \(N, C\), got torch.bool"):
        ranking.gap_at_k(targets, targets)
    with pytest.raises(ValueError, match="scores: contains NaN"):
        ranking.gap_at_k(scores * math.nan, targets)
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        ranking.gap_at_k(scores, targets, k=0)
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"indices: expected gallery indices in \[0, 2\)"):
        ranking.relevance(torch.tensor([[0, 2], [1, 0]]), labels, labels)
    with pytest.raises(ValueError, match="indices: expected 2 rows"):
        ranking.relevance(torch.tensor([[0, 1]]), labels, labels)
    with pytest.raises(TypeError, match="relevance_fn: expected a bool tensor"):
        ranking.relevance(torch.tensor([[0], [1]]), labels, labels, lambda q, r: (r == q.unsqueeze(1)).long())
    with pytest.raises(ValueError, match=r"relevance_fn: expected a bool tensor of shape \(2, 1\)"):
        ranking.relevance(torch.tensor([[0], [1]]), labels, labels, lambda q, r: q.unsqueeze(1) == q.unsqueeze(0))


def test_shared_levels_of_an_empty_batch_and_level_ids():
    from deepmetric.labels import level_ids, shared_levels
    y = torch.tensor([[1, 5], [0, 5], [1, 2], [1, 5]])
    assert shared_levels(y[:0], y).shape == (0, 4) and shared_levels(y, y[:0]).shape == (4, 0)
    assert shared_levels(torch.zeros(0, dtype=torch.long)).shape == (0, 0)
    # column 0: parents 0 < 1; column 1: rows (0,5) < (1,2) < (1,5)
    assert level_ids(y).tolist() == [[1, 2], [0, 0], [1, 1], [1, 2]]
    with pytest.raises(ValueError, match="expected hierarchical"):
        level_ids(torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", ["flat", "multi-label", "relevance_fn"])
def test_count_relevant_checks_its_groups_whatever_the_labels(kind):
    # the flat path ignored gallery_groups without query_groups (labels [0] against [0, 0, 1] counted 2)
    # and failed with an AttributeError for query_groups alone; only multi-label labels were checked
    if kind == "multi-label":
        q, g = torch.tensor([[True, False]]), torch.tensor([[True, False], [True, False], [False, True]])
    else:
        q, g = torch.tensor([0]), torch.tensor([0, 0, 1])
    fn = (lambda a, b: a.unsqueeze(1) == b) if kind == "relevance_fn" else None
    assert ranking.count_relevant(q, g, relevance_fn=fn).tolist() == [2]
    assert ranking.count_relevant(q, g, query_groups=torch.tensor([7]), gallery_groups=torch.tensor([7, 8, 8]),
                                  relevance_fn=fn).tolist() == [1]
    for groups in ({"gallery_groups": torch.tensor([7, 8, 8])}, {"query_groups": torch.tensor([7])}):
        with pytest.raises(ValueError, match="query_groups and gallery_groups must be given together"):
            ranking.count_relevant(q, g, relevance_fn=fn, **groups)
    with pytest.raises(ValueError, match=r"gallery_groups: expected shape \(3,\)"):
        ranking.count_relevant(q, g, query_groups=torch.tensor([7]), gallery_groups=torch.tensor([7, 8]),
                               relevance_fn=fn)
