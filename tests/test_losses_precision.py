"""Half-precision embeddings: every registered loss computes in float32 (as ``torch.autocast`` runs
losses), so large batches neither overflow float16 (max 65504) nor miscount in bfloat16 (exact
integers only to 256). Before, a float16 batch of 256 gave 0 or NaN for margin, triplet and histogram."""
import pytest
import torch
import torch.nn.functional as F

import deepmetric as dm

B, CLASSES, DIM = 256, 32, 16  # 8 per class: tens of thousands of triplets and pairs
NEEDS_SIZES = {"proxy-nca", "proxy-anchor", "normalized-softmax", "cosface", "arcface", "sub-center-arcface",
               "soft-triple", "center"}
HIERARCHICAL = {"quadlet", "pentuplet", "radial", "sgml", "ie"}


def make(name):
    if name in NEEDS_SIZES:
        return dm.losses.create(name, num_classes=CLASSES, embedding_size=DIM)
    if name == "ie":
        return dm.losses.create(name, num_classes=CLASSES, embedding_size=DIM, level=-1)
    if name == "sgml":
        return dm.losses.create(name, num_attributes=[CLASSES // 8, CLASSES], embedding_size=DIM)
    if name == "xbm":
        return dm.losses.create(name, loss="contrastive", embedding_size=DIM, memory_size=B)
    return dm.losses.create(name)


@pytest.mark.parametrize("name", dm.losses.LOSSES.names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_embeddings_give_the_float32_loss(name, dtype):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(B, DIM, generator=g), dim=1).to(dtype).requires_grad_()
    fine = torch.arange(CLASSES).repeat_interleave(B // CLASSES)
    labels = torch.stack([fine // 8, fine], 1) if name in HIERARCHICAL else fine
    torch.manual_seed(1)
    loss = make(name)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    value = loss(x, labels)
    value.backward()
    loss.load_state_dict(state)  # the memory loss enqueued the batch
    x32 = x.detach().float().requires_grad_()
    expected = loss(x32, labels)
    expected.backward()
    assert torch.isfinite(expected) and float(expected) > 0, float(expected)
    assert value.dtype == torch.float32 and torch.equal(value, expected), (float(value), float(expected))
    assert x.grad.dtype == dtype and torch.allclose(x.grad.float(), x32.grad, rtol=1e-2, atol=1e-6)
    assert bool(x.grad.abs().sum() > 0)
