"""Report plots: which appear for which data, and the neighbours they show (hand-worked)."""
import pytest
import torch

import deepmetric as dm
from deepmetric.report import (embedding_figure, evaluation_figures, nearest_neighbours, neighbours_figure,
                               recall_figure, write_evaluation_report)


def test_nearest_neighbours_hand_worked():
    # items on a line at 0, 1, 3, 4, 10 with classes 0, 0, 1, 1, 0
    # item 0: 1 (d 1, same), 3 (d 3, other), 4 (d 4, other); item 2: 3 (d 1, same), 1 (d 2, other), 4 (d 3, other)
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0], [10.0]])
    y = torch.tensor([0, 0, 1, 1, 0])
    ids, relevant = nearest_neighbours(x, y, "euclidean", torch.tensor([0, 2]), 3)
    assert ids.tolist() == [[1, 2, 3], [3, 1, 0]]
    assert relevant.tolist() == [[True, False, False], [True, False, False]]
    # k beyond the other items: all of them; hierarchical labels judge the finest class, or with
    # levels=True count the leading levels shared (2 = the same finest class; 1 = the same parent
    # only, e.g. the same actor in another track)
    tree = torch.stack([torch.tensor([0, 0, 0, 0, 1]), y], 1)
    ids, relevant = nearest_neighbours(x, tree, "euclidean", torch.tensor([4]), 10)
    assert ids.tolist() == [[3, 2, 1, 0]] and relevant.tolist() == [[False, False, False, False]]
    ids, relevant = nearest_neighbours(x, tree, "euclidean", torch.tensor([0]), 4)
    assert ids.tolist() == [[1, 2, 3, 4]] and relevant.tolist() == [[True, False, False, False]]
    ids, shared = nearest_neighbours(x, tree, "euclidean", torch.tensor([0]), 4, levels=True)
    assert shared.tolist() == [[2, 1, 1, 0]]
    # groups (e.g. frames of one video): nothing of the query's group; slots beyond the rest are empty
    ids, relevant = nearest_neighbours(x, y, "euclidean", torch.tensor([0]), 4, groups=torch.tensor([0, 0, 1, 1, 0]))
    assert ids.tolist() == [[2, 3, -1, -1]] and relevant.tolist() == [[False, False, False, False]]


def test_which_plots_appear():
    gen = torch.Generator().manual_seed(0)
    emb, y = torch.randn(40, 5, generator=gen), torch.arange(40) % 4
    metrics = {"recall_at_1": 0.5, "recall_at_2": 0.7}
    images = torch.rand(40, 1, 6, 6, generator=gen)
    names = [name for name, _ in evaluation_figures(metrics, emb, y, "euclidean")]
    assert names == ["Test recall@K", "Test embeddings"]
    names = [name for name, _ in evaluation_figures(metrics, emb, y, "cosine", inputs=images)]
    assert names == ["Test recall@K", "Test embeddings",
                     "Nearest neighbours (green: relevant, red: not; cosine distance)"]
    assert neighbours_figure(images[:, 0], emb, y, "euclidean") is None  # (N, T, F) may be sequences
    assert neighbours_figure(torch.rand(40, 36, generator=gen), emb, y, "euclidean") is None  # features
    assert embedding_figure(emb, torch.rand(40, 3, generator=gen) < 0.5) is None  # multi-label
    assert embedding_figure(emb[:, :1], y) is not None  # 1-D embeddings: a line
    with pytest.raises(ValueError, match="inputs: expected 40 items like the embeddings, got 39"):
        neighbours_figure(images[:39], emb, y, "euclidean")


def test_classes_of_a_hierarchy_are_named_by_their_path():
    from deepmetric.labels import class_names, item_classes
    classes, ids = item_classes(torch.tensor([[3, 17], [3, 17], [5, 2], [3, 4]]))
    assert ids.tolist() == [1, 1, 2, 0] and class_names(classes) == ["3/4", "3/17", "5/2"]
    classes, ids = item_classes(torch.tensor([7, 2, 7]))
    assert ids.tolist() == [1, 0, 1] and class_names(classes) == [2, 7]


def test_reports_name_what_they_show(tmp_path):
    # hierarchical labels with each track a group: the finest level has no relevant item, so the
    # recall curve is level_0's alone and must say so; neighbours of the same actor are orange;
    # --split all is not "test"; per-class tables of every level; no "nan" where JSON has null
    gen = torch.Generator().manual_seed(2)
    emb = torch.randn(24, 4, generator=gen)
    labels = torch.stack([torch.arange(24) // 12, torch.arange(24) // 4], 1)  # 2 actors, 6 tracks of 4
    metrics = dm.evaluate(emb, labels, nmi=False, per_class=True, groups=labels[:, 1])
    metrics["level_0"]["mrr"] = float("nan")
    path = write_evaluation_report(tmp_path / "r.html", metrics, emb, labels, "euclidean",
                                   inputs=torch.rand(24, 1, 5, 5, generator=gen), groups=labels[:, 1], top="all")
    text = path.read_text(encoding="utf-8")
    assert "<h2>All recall@K</h2>" in text and "<h2>All embeddings</h2>" in text and "Test" not in text
    assert "green: same finest class, orange: same coarser class only, red: other" in text
    assert "<h2>Per class at level_0</h2>" in text  # level_1's classes are the top-level table's
    assert "<h2>Per class at level_1</h2>" not in text
    assert "nan" not in text
    figure = recall_figure(metrics, "all")
    assert figure[0] == "All recall@K"


def test_write_evaluation_report(tmp_path):
    gen = torch.Generator().manual_seed(1)
    emb, y = torch.randn(30, 4, generator=gen), torch.arange(30) % 3
    path = write_evaluation_report(tmp_path / "r.html", {"recall_at_1": 0.25, "num_queries": 30}, emb, y, "euclidean",
                                   inputs=torch.rand(30, 3, 5, 5, generator=gen), title="test <set>")
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 3 and "<td>recall_at_1</td><td>0.2500</td>" in text
    assert "deepmetric test &lt;set&gt;" in text and "<td>num_queries</td><td>30</td>" in text


def test_report_shows_every_level_and_class(tmp_path):
    # nested results (hierarchy levels, within the parent, the class mean, per class) used to be left
    # out: with single-item finest classes the table held only NDCG and the recall plot was empty
    emb, y = torch.randn(12, 3, generator=torch.Generator().manual_seed(2)), torch.arange(12) % 3
    metrics = {"ndcg_at_1": 0.5, "num_queries": 12, "queries_without_relevant": 12,
               "level_0": {"recall_at_1": 0.75, "recall_at_2": 1.0, "map_at_r": 0.625},
               "level_1_within_parent": {"map_at_r": 0.125}, "class_mean": {"map_at_r": 0.375},
               "per_class": {"0/1": {"map_at_r": 0.25, "num_queries": 4}, "2/5": {"num_queries": 1}}}
    text = write_evaluation_report(tmp_path / "r.html", metrics, emb, y, "euclidean").read_text()
    header = "<tr><th></th><th>test</th><th>level_0</th><th>level_1_within_parent</th><th>class_mean</th></tr>"
    assert header in text
    assert "<tr><td>map_at_r</td><td>-</td><td>0.6250</td><td>0.1250</td><td>0.3750</td></tr>" in text
    assert "<tr><td>ndcg_at_1</td><td>0.5000</td><td>-</td><td>-</td><td>-</td></tr>" in text
    assert "<h2>Per class</h2><table><tr><th></th><th>map_at_r</th><th>num_queries</th></tr>" in text
    assert "<tr><td>2/5</td><td>-</td><td>1</td></tr>" in text
    assert text.count("data:image/png;base64,") == 2  # the recall curve of level_0, the embeddings
    flat = write_evaluation_report(tmp_path / "f.html", {"map_at_r": 0.5}, emb, y, "euclidean").read_text()
    assert flat.count("data:image/png;base64,") == 1  # no recall keys: no empty recall plot
