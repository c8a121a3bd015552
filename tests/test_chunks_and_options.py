"""Paths that only run when the data are cut into chunks, or under an option the other tests leave off.

Each case is worked by hand; each was found by mutation testing (a plausible slip in the code that no
other test caught).
"""
import torch

from deepmetric.evaluation import hierarchy, ranking
from deepmetric.index import knn
from deepmetric.mining import BatchEasyHardMiner


def test_padded_slots_are_never_relevant_on_the_general_path():
    # hierarchical labels and relevance_fn gather result labels at index -1 clamped to item 0: item 0
    # shares the query's labels here, so an unmasked padded slot would count as relevant
    query, gallery = torch.tensor([[0, 0]]), torch.tensor([[0, 0], [1, 1]])
    assert ranking.relevance(torch.tensor([[1, -1]]), query, gallery).tolist() == [[False, False]]
    same = ranking.relevance(torch.tensor([[1, -1]]), torch.tensor([0]), torch.tensor([0, 1]),
                             relevance_fn=lambda q, r: r == q.unsqueeze(1))
    assert same.tolist() == [[False, False]]


def test_count_relevant_excludes_each_query_itself_in_every_chunk(monkeypatch):
    # with a relevance function the (Q, G) relevance is built in blocks of _BLOCK entries; every query of
    # a later block must drop itself (its own column), not a column of the first block
    monkeypatch.setattr(ranking, "_BLOCK", 4)
    labels = torch.tensor([0, 0, 0, 1])
    counts = ranking.count_relevant(labels, labels, exclude_self=True, relevance_fn=lambda q, r: r == q.unsqueeze(1))
    assert counts.tolist() == [2, 2, 2, 0]


def test_gap_reads_each_chunk_of_items_with_its_own_targets(monkeypatch):
    # the docstring's example: top-2 predictions 0.9 (1), 0.8 (1), 0.7 (0), 0.5 (1); 3 positives:
    # (1/1 + 2/2 + 3/4) / 3 = 0.91666; cut into chunks of one item each
    monkeypatch.setattr(ranking, "_BLOCK", 3)
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    targets = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert abs(ranking.gap_at_k(scores, targets, k=2) - (1 + 1 + 3 / 4) / 3) < 1e-9


def test_quadlet_distances_are_euclidean_not_squared():
    # four items on a line, levels (class, sub-class): every quadlet has q in {0, 1}, p the other of the
    # two, i = 2 (same class), n = 3 (other class); positions 0, 1, 3, 7
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    y = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0]])
    dp, di, dn = hierarchy.quadlet_distances(x, y, distance="euclidean", samples=4)
    assert (dp == 1).all()
    assert set(di.tolist()) <= {3.0, 2.0} and set(dn.tolist()) <= {7.0, 6.0}


def test_easy_hard_ranges_apply_to_the_dot_product_itself():
    # allowed_pos_range is in the distance's own values: for "dot", the products (not their negatives).
    # Products: (0,1) 2, (0,2) 0.5, (1,2) 1; anchors 1 and 2 keep the positive at product 1 in [0.9, 1.5]
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 0, 1])
    miner = BatchEasyHardMiner("hard", "hard", allowed_pos_range=(0.9, 1.5), distance="dot")
    triplets = miner(x, y)
    assert triplets.a.tolist() == [1, 2] and triplets.p.tolist() == [2, 1] and triplets.n.tolist() == [3, 3]


def test_exact_search_excludes_the_query_itself_in_every_chunk_of_queries():
    # a copy of the gallery (not the same tensor, so not the symmetric route), queries in chunks of 2
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    _, idx = knn(x, x.clone(), 1, exclude_self=True, chunk_size=2)
    assert idx.tolist() == [[1], [0], [1], [2]]


def test_deeper_search_of_near_ties_still_excludes_the_query_itself():
    # 40 identical rows: their k-th candidate ties within rounding, so those rows are searched again,
    # deeper; that second search must exclude the query too
    x = torch.cat([torch.zeros(40, 4, dtype=torch.float64),
                   torch.randn(200, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))])
    _, idx = knn(x, x.clone(), 3, exclude_self=True)
    assert not (idx == torch.arange(len(x)).unsqueeze(1)).any()


def test_symmetric_route_keeps_the_groups():
    # queries = gallery (the symmetric self-search): each query's own group is excluded
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    groups = torch.tensor([0, 0, 1, 1])
    _, idx = knn(x, x, 1, exclude_self=True, query_groups=groups, gallery_groups=groups)
    assert idx.tolist() == [[2], [2], [1], [1]]
