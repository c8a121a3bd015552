"""Cross-batch memory: a FIFO queue of past embeddings as the reference set, no self-comparison."""
import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

import deepmetric as dm


def batches(n_batches=4, b=12, d=5, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (b,), generator=g))
            for _ in range(n_batches)]


def contrastive_loop(x, y, mem_x, mem_y, own, pos_margin=0.0, neg_margin=1.0, nonzero=True):
    """Plain loop: pairs of batch anchors with memory items (an anchor's own slot excluded),
    positive and negative parts each averaged over their non-zero terms (all terms if not
    ``nonzero``), then added."""
    pos, neg = [], []
    for i in range(len(x)):
        for j in range(len(mem_x)):
            d = torch.linalg.norm(x[i] - mem_x[j])
            if y[i] == mem_y[j] and j != own[i]:
                pos.append(torch.clamp(d - pos_margin, min=0))
            elif y[i] != mem_y[j]:
                neg.append(torch.clamp(neg_margin - d, min=0))
    part = [torch.stack(t) for t in (pos, neg) if t]
    if not nonzero:
        return sum(v.mean() for v in part)
    return sum(v[v > 0].mean() if (v > 0).any() else v.sum() * 0 for v in part)


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean"])
def test_equals_a_loop_over_batch_and_memory_pairs_with_wraparound(reduction):
    """With ``mean`` the own slot's zero distance would count in the positive mean, so leaving it in
    changes the value (with ``mean_nonzero`` a zero term drops out either way)."""
    xbm = dm.losses.create("xbm", loss={"name": "contrastive", "reduction": reduction}, embedding_size=5,
                           memory_size=30)
    queue_x, queue_y = [], []
    for step, (x, y) in enumerate(batches()):
        x = x.requires_grad_(True)
        value = xbm(x, y)
        queue_x += list(x.detach())
        queue_y += list(y)
        # FIFO of 30 holding the last items; slots are positions modulo 30
        start = max(0, len(queue_x) - 30)
        slots = [(start + k) % 30 for k in range(len(queue_x) - start)]
        mem_x = torch.zeros(30, 5, dtype=torch.float64)
        mem_y = torch.zeros(30, dtype=torch.long)
        for s, v, lab in zip(slots, queue_x[start:], queue_y[start:]):
            mem_x[s], mem_y[s] = v, lab
        n = min(len(queue_x), 30)
        own = [(12 * step + i) % 30 for i in range(12)]
        nonzero = reduction == "mean_nonzero"
        expected = contrastive_loop(x, y, mem_x[:n], mem_y[:n], own, nonzero=nonzero)
        torch.testing.assert_close(value, expected)
        grad, = torch.autograd.grad(value, x)
        ref, = torch.autograd.grad(contrastive_loop(x, y, mem_x[:n], mem_y[:n], own, nonzero=nonzero), x)
        torch.testing.assert_close(grad, ref)
        torch.testing.assert_close(xbm.memory[:n], mem_x[:n])
    assert int(xbm.filled) == 30 and int(xbm.head) == 48 % 30


def assert_same_as_pml(ours, theirs, seed):
    """Values and gradients over five batches, the memory filling and wrapping around."""
    for x, y in batches(n_batches=5, seed=seed):
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        mine, pml = ours(a, y), theirs(b, y)
        torch.testing.assert_close(mine, pml.to(mine.dtype), rtol=1e-5, atol=1e-7)
        mine.backward()
        pml.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("with_miner", [False, True])
@pytest.mark.parametrize("margin", [0.3, 10.0])  # 10: far beyond the distances, so the own slot would be mined
def test_equals_pytorch_metric_learning(with_miner, margin):
    lp = pml_distances.LpDistance(normalize_embeddings=False)
    ours = dm.losses.create("xbm", loss={"name": "triplet", "margin": margin}, embedding_size=5, memory_size=40,
                            miner={"name": "triplet-margin", "margin": margin} if with_miner else None)
    theirs = pml_losses.CrossBatchMemory(
        pml_losses.TripletMarginLoss(margin=margin, distance=lp), embedding_size=5, memory_size=40,
        miner=pml_miners.TripletMarginMiner(margin=margin, distance=lp) if with_miner else None)
    assert_same_as_pml(ours, theirs, seed=1)


def test_queue_is_saved_with_the_loss_and_restored():
    xbm = dm.losses.create("xbm", loss="contrastive", embedding_size=5, memory_size=30)
    for x, y in batches(2):
        xbm(x, y)
    other = dm.losses.create("xbm", loss="contrastive", embedding_size=5, memory_size=30)
    other.load_state_dict(xbm.state_dict())
    x, y = batches(3, seed=5)[2]
    torch.testing.assert_close(other(x, y), xbm(x, y))


def test_errors_are_clear():
    xbm = dm.losses.create("xbm", loss="contrastive", embedding_size=5, memory_size=10)
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="does not fit"):
        xbm(x, y)
    xbm = dm.losses.create("xbm", loss="contrastive", embedding_size=4, memory_size=100)
    with pytest.raises(ValueError, match="embedding_size"):
        xbm(x, y)
    with pytest.raises(ValueError, match="miner"):
        xbm(x[:, :4], y, dm.mining.create("batch-hard")(x[:, :4], y))
    with pytest.raises(ValueError, match="memory_size"):
        dm.losses.create("xbm", loss="contrastive", embedding_size=4, memory_size=0)


def test_mined_pairs_equal_pytorch_metric_learning():
    """A pair miner against the memory: with ``pos_margin=-1`` every positive is mined, the anchor's
    own slot (distance 0) too, and that one is dropped as pml drops self-comparisons."""
    lp = pml_distances.LpDistance(normalize_embeddings=False)
    ours = dm.losses.create("xbm", loss={"name": "contrastive", "reduction": "mean"}, embedding_size=5,
                            memory_size=40, miner={"name": "pair-margin", "pos_margin": -1.0, "neg_margin": 10.0})
    theirs = pml_losses.CrossBatchMemory(
        pml_losses.ContrastiveLoss(distance=lp, reducer=pml_reducers.MeanReducer()), embedding_size=5,
        memory_size=40, miner=pml_miners.PairMarginMiner(pos_margin=-1.0, neg_margin=10.0, distance=lp))
    assert_same_as_pml(ours, theirs, seed=2)
