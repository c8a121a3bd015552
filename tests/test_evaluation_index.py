"""evaluate's approximate mode reads the ranked lists from a deepmetric.index backend."""
import pytest
import torch

import deepmetric as dm


def clusters(n=600, classes=30, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_an_exhaustive_index_gives_the_exact_metrics(distance):
    x, y = clusters()
    exact = dm.evaluate(x, y, distance=distance, nmi=False)
    # ivf-fastscan: every list probed, and refine * depth (R + 1 >= 11) >= 600 re-ranks every item exactly
    for name, options in (("flat", {}), ("ivf-flat", {"nlist": 8, "nprobe": 8}),
                          ("ivf-fastscan", {"nlist": 8, "nprobe": 8, "refine": 60})):
        approx = dm.evaluate(x, y, distance=distance, nmi=False, index=name, index_options=options)
        assert approx.keys() == exact.keys()
        for key, value in exact.items():
            assert approx[key] == pytest.approx(value, abs=1e-6), (name, key)


def test_separate_gallery_and_an_approximate_index():
    x, y = clusters(seed=1)
    q, g, qy, gy = x[:100], x[100:], y[:100], y[100:]
    exact = dm.evaluate(q, qy, gallery=g, gallery_labels=gy, nmi=False)
    approx = dm.evaluate(q, qy, gallery=g, gallery_labels=gy, nmi=False, index="flat")
    assert approx["map_at_r"] == pytest.approx(exact["map_at_r"], abs=1e-6)


@pytest.mark.parametrize("name", ["ivf-flat", "ivf-fastscan"])
def test_a_probing_index_loses_little_on_clustered_data(name):
    x, y = clusters(n=2000, classes=20, seed=2)
    exact = dm.evaluate(x, y, nmi=False)["map_at_r"]
    approx = dm.evaluate(x, y, nmi=False, index=name, index_options={"nlist": 20, "nprobe": 4})["map_at_r"]
    assert approx == pytest.approx(exact, rel=0.05)


def test_groups_need_the_exact_search():
    x, y = clusters(n=100)
    with pytest.raises(ValueError, match="groups"):
        dm.evaluate(x, y, groups=torch.arange(100) // 2, nmi=False, index="flat")
    with pytest.raises(KeyError, match="no-such-index"):
        dm.evaluate(x, y, nmi=False, index="no-such-index")
    with pytest.raises(ValueError, match="full_map: .*exact search"):
        dm.evaluate(x, y, nmi=False, index="hnsw", full_map=True)


class FirstItems:
    """A stand-in approximate index that can only retrieve the first ``keep`` gallery items."""

    def __init__(self, distance="euclidean", keep=10):
        self.keep, self.inner = keep, dm.index.create("exact", distance=distance)

    def add(self, vectors):
        self.inner.add(vectors[: self.keep])

    def search(self, queries, k):
        return self.inner.search(queries, k)


def test_mrr_stops_when_the_index_has_nothing_more_and_equals_a_loop(monkeypatch):
    """Queries whose relevant items the index cannot return get reciprocal rank 0 (their list ends)
    instead of being searched ever deeper; the others get the rank within what the index returns."""
    monkeypatch.setitem(dm.index.INDEXES._items, "first-items", FirstItems)  # registered for this test only
    x, y = clusters(n=120, classes=6, seed=3)
    order = torch.argsort(y, stable=True)
    x, y = x[order], y[order]  # the first items hold the first classes only
    keep = 30
    got = dm.evaluate(x, y, nmi=False, ks=(1,), index="first-items", index_options={"keep": keep})
    d = torch.cdist(x, x[:keep])
    rr = []
    for q in range(len(x)):
        if int((y == y[q]).sum()) < 2:
            continue  # no relevant item anywhere: excluded from the means
        order = [j for j in torch.argsort(d[q], stable=True).tolist() if j != q]
        hits = [r for r, j in enumerate(order, start=1) if y[j] == y[q]]
        rr.append(1.0 / hits[0] if hits else 0.0)
    assert got["mrr"] == pytest.approx(sum(rr) / len(rr), abs=1e-9)
    assert any(v == 0.0 for v in rr)  # the case the test is about occurs


def test_lists_cut_short_by_the_index_are_warned_about(monkeypatch):
    # an IVF returns only the items of its probed lists: fewer than R and the missing ranks count as
    # not relevant, which lowered R-precision by 10% on MNIST with nothing said
    monkeypatch.setitem(dm.index.INDEXES._items, "first-items", FirstItems)
    x, y = clusters(n=120, classes=6, seed=3)
    with pytest.warns(UserWarning, match=r"index: \d+ of the \d+ result lists of 'first-items' ended before the "
                                         r"depth asked for") as caught:
        dm.evaluate(x, y, nmi=False, index="first-items", index_options={"keep": 30})
    assert caught[0].filename == __file__  # the caller's line, not the library's
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.evaluate(x, y, nmi=False, index="flat")  # every list complete


def test_index_options_are_checked():
    x, y = clusters(n=100)
    with pytest.raises(ValueError, match="index_options: given without index="):
        dm.evaluate(x, y, nmi=False, index_options={"nprobe": 4})
    with pytest.raises(TypeError, match="index_options: expected a dict"):
        dm.evaluate(x, y, nmi=False, index="ivf-flat", index_options="nlist=8")
    with pytest.raises(ValueError, match="index_options: 'distance' is evaluate's own argument"):
        dm.evaluate(x, y, nmi=False, index="flat", index_options={"distance": "cosine"})
    with pytest.raises(ValueError, match="nprobe: expected an integer"):  # None meant faiss' 1, silently
        dm.evaluate(x, y, nmi=False, index="ivf-flat", index_options={"nlist": 4, "nprobe": None})
