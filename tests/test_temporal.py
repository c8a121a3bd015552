"""Temporal pooling (mean, max, attention, NetVLAD, recurrent), modality fusion and the video model."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from deepmetric.models.heads import MODELS, MLPHead
from deepmetric.models.temporal import (
    POOLINGS, AttentionPool, EarlyFusion, LateFusion, MaxPool, MeanPool, ModalityEncoders, NetVLAD,
    RecurrentPool, VideoEmbedder,
)

D = 6
POOLS = {
    "mean": lambda: MeanPool(D),
    "max": lambda: MaxPool(D),
    "attention": lambda: AttentionPool(D, hidden=5),
    "netvlad": lambda: NetVLAD(D, clusters=3),
    "gru": lambda: RecurrentPool(D, hidden=4, cell="gru"),
    "lstm-bi": lambda: RecurrentPool(D, hidden=4, cell="lstm", bidirectional=True),
    "gru-2-layers": lambda: RecurrentPool(D, hidden=4, cell="gru", num_layers=2),
}
ORDERLESS = ["mean", "max", "attention", "netvlad"]
OUT = {"mean": D, "max": D, "attention": D, "netvlad": 3 * D, "gru": 4, "lstm-bi": 8, "gru-2-layers": 4}


def make(name, dtype=torch.float64):
    torch.manual_seed(0)
    return POOLS[name]().to(dtype)


def batch(b=3, t=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g, dtype=dtype)
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[0] = True          # a full row
    mask[1, 0] = True       # at least one real frame
    return x, mask


@pytest.mark.parametrize("name", POOLS)
def test_shapes_and_out_features(name):
    pool = make(name, torch.float32)
    x, mask = batch(dtype=torch.float32)
    assert pool(x, mask).shape == (3, OUT[name])
    assert pool(x).shape == (3, OUT[name])
    assert pool.out_features == OUT[name]


@pytest.mark.parametrize("name", POOLS)
@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 5), pad=st.integers(1, 6), seed=st.integers(0, 10_000),
       scale=st.sampled_from([1.0, 1e3, 1e12, 1e30]), interleave=st.booleans())
def test_padding_never_changes_the_output(name, b, t, pad, seed, scale, interleave):
    pool = make(name)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < 0.7
    junk = torch.randn(b, pad, D, generator=g, dtype=torch.float64) * scale
    xp = torch.cat([x, junk], dim=1)
    mp = torch.cat([mask, torch.zeros(b, pad, dtype=torch.bool)], dim=1)
    if interleave:  # padded frames anywhere, real frames keep their order
        slots = torch.randperm(t + pad, generator=g)
        perm = torch.empty(t + pad, dtype=torch.long)
        perm[slots[:t].sort().values] = torch.arange(t)
        perm[slots[t:]] = torch.arange(t, t + pad)
        xp, mp = xp[:, perm], mp[:, perm]
    expected = pool(x, mask)
    got = pool(xp, mp)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ORDERLESS)
def test_permuting_real_frames_changes_nothing(name):
    pool = make(name)
    x, mask = batch(t=7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(pool(x[:, perm], mask[:, perm]), pool(x, mask))


def test_recurrent_pool_is_order_sensitive_and_equals_the_rnn_on_real_frames():
    pool = make("lstm-bi")
    x, mask = batch(t=6)
    out = pool(x, mask)
    for i in range(3):
        real = x[i, mask[i]].unsqueeze(0)
        _, (h, _) = pool.rnn(real)
        torch.testing.assert_close(out[i], torch.cat([h[-2, 0], h[-1, 0]]))
    flipped = pool(x.flip(1), mask.flip(1))
    assert not torch.allclose(flipped[0], out[0])


def test_mean_and_max_by_hand():
    x = torch.tensor([[[1.0, -5.0], [3.0, -2.0], [100.0, 100.0]],
                      [[-1.0, -5.0], [-3.0, -2.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    torch.testing.assert_close(MeanPool()(x, mask), torch.tensor([[2.0, -3.5], [-2.0, -3.5]]))
    torch.testing.assert_close(MaxPool()(x, mask), torch.tensor([[3.0, -2.0], [-1.0, -2.0]]))
    torch.testing.assert_close(MeanPool()(x), torch.tensor([[104 / 3, 93 / 3], [-4 / 3, -7 / 3]]))


def test_attention_by_hand():
    # e_t = c tanh(x_t1) with c = ln 3 / tanh 1: e = (ln 3, 0) -> alpha = (3/4, 1/4)
    pool = AttentionPool(2, hidden=1).double()
    with torch.no_grad():
        pool.project.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pool.project.bias.zero_()
        pool.score.weight.fill_(math.log(3) / math.tanh(1))
    x = torch.tensor([[[1.0, 2.0], [0.0, 6.0], [50.0, -7.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(pool.weights(x, mask), torch.tensor([[0.75, 0.25, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(pool(x, mask), torch.tensor([[0.75, 3.0]], dtype=torch.float64))


def netvlad_loop(x, mask, w, b, c):
    """NetVLAD written as the paper's sums, one item, frame and cluster at a time."""
    out = []
    for i in range(x.shape[0]):
        vs = []
        for k in range(c.shape[0]):
            v = torch.zeros(x.shape[2], dtype=x.dtype)
            for t in range(x.shape[1]):
                if mask[i, t]:
                    logits = torch.stack([w[j] @ x[i, t] + b[j] for j in range(c.shape[0])])
                    a = torch.exp(logits[k]) / torch.exp(logits).sum()
                    v = v + a * (x[i, t] - c[k])
            norm = torch.sqrt((v * v).sum())
            vs.append(v / norm if norm > 0 else v)
        v = torch.cat(vs)
        norm = torch.sqrt((v * v).sum())
        out.append(v / norm if norm > 0 else v)
    return torch.stack(out)


def test_netvlad_matches_a_plain_loop_in_values_and_gradients():
    pool = make("netvlad")
    x, mask = batch(b=2, t=4)
    x.requires_grad_(True)
    weight = torch.randn(2, 3 * D, dtype=torch.float64)
    got = pool(x, mask)
    params = [x, pool.assign.weight, pool.assign.bias, pool.centers]
    grads = torch.autograd.grad((got * weight).sum(), params)
    ref = netvlad_loop(x, mask, pool.assign.weight, pool.assign.bias, pool.centers)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    torch.testing.assert_close(got, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_netvlad_initialisation_is_soft_assignment_to_the_nearest_centre():
    pool = NetVLAD(D, clusters=3, alpha=2.0).double()
    x = torch.randn(4, D, dtype=torch.float64)
    a = torch.softmax(pool.assign(x), dim=-1)
    expected = torch.softmax(-2.0 * torch.cdist(x, pool.centers) ** 2, dim=-1)
    torch.testing.assert_close(a, expected)


@pytest.mark.parametrize("name", POOLS)
def test_gradients_are_finite_and_reach_every_parameter(name):
    pool = make(name)
    x, mask = batch(t=6)
    x = x.masked_fill(~mask.unsqueeze(-1), 1e30)  # huge padded values
    mask[2] = False                               # and a row with no real frame
    x.requires_grad_(True)
    out = pool(x, mask)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~mask] == 0).all()
    for pname, p in pool.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", POOLS)
def test_rows_without_real_frames_give_zeros(name):
    pool = make(name)
    x, mask = batch()
    mask[:] = False
    mask[0, 1] = True
    out = pool(x * 1e20, mask)
    assert torch.isfinite(out).all()
    assert (out[1:] == 0).all() and out[0].abs().sum() > 0


@pytest.mark.parametrize("name", POOLS)
def test_bad_frames_and_masks_raise_clear_errors(name):
    pool = make(name)
    x, mask = batch()
    with pytest.raises(ValueError, match=r"D = 6.*\(3, 5, 7\)"):
        pool(torch.randn(3, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mask: expected shape \(B, T\) = \(3, 5\).*\(3, 4\)"):
        pool(x, mask[:, :4])
    with pytest.raises(TypeError, match="mask: expected dtype torch.bool"):
        pool(x, mask.long())
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        pool(x[:, 0])


def test_pooling_registry_and_unknown_names():
    assert POOLINGS.names() == ["attention", "max", "mean", "netvlad", "recurrent"]
    with pytest.raises(KeyError, match="known poolings: attention, max"):
        POOLINGS.create("sum", in_features=3)
    with pytest.raises(ValueError, match="cell: expected one of"):
        RecurrentPool(3, cell="rnn")


DIMS = {"visual": 8, "audio": 5}


def modalities(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, d, generator=g) for m, d in DIMS.items()}


def test_fusion_shapes_and_normalisation():
    torch.manual_seed(0)
    for cls in (EarlyFusion, LateFusion):
        z = cls(DIMS, hidden=7, out_features=3)(modalities())
        assert z.shape == (4, 3)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
        assert cls(DIMS, hidden=(7, 6), out_features=3, normalize=False)(modalities()).shape == (4, 3)


def test_late_fusion_is_the_product_of_the_modality_networks():
    torch.manual_seed(0)
    fusion = LateFusion(DIMS, hidden=7, out_features=3, normalize=False)
    x = modalities()
    expected = fusion.encoders["visual"](x["visual"]) * fusion.encoders["audio"](x["audio"])
    torch.testing.assert_close(fusion(x), expected)


def test_early_fusion_concatenates_in_the_order_of_dims():
    torch.manual_seed(0)
    fusion = EarlyFusion(DIMS, hidden=7, out_features=3, normalize=False)
    x = modalities()
    reordered = {"audio": x["audio"], "visual": x["visual"]}
    torch.testing.assert_close(fusion(reordered), fusion.mlp(torch.cat([x["visual"], x["audio"]], dim=1)))


def test_early_fusion_of_one_modality_is_an_mlp_on_it():
    torch.manual_seed(0)
    fusion = EarlyFusion({"visual": 8}, hidden=7, out_features=3, normalize=False)
    mlp = MLPHead(in_shape=(8,), hidden=(7,), out_features=3)
    mlp.load_state_dict(fusion.mlp.state_dict())
    x = modalities()["visual"]
    torch.testing.assert_close(fusion({"visual": x}), mlp(x))


def test_modality_encoders_share_one_space():
    torch.manual_seed(0)
    enc = ModalityEncoders(DIMS, hidden=7, out_features=3)
    x = modalities()
    audio, visual = enc(x["audio"], modality="audio"), enc(x["visual"], modality="visual")
    assert audio.shape == visual.shape == (4, 3)
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(4))
    both = enc(x)
    torch.testing.assert_close(both["audio"], audio)
    # an audio query ranks a visual gallery
    assert (audio @ visual.T).shape == (4, 4)


def test_fusion_errors_name_what_was_expected():
    torch.manual_seed(0)
    x = modalities()
    for fusion in (EarlyFusion(DIMS, hidden=4, out_features=2), LateFusion(DIMS, hidden=4, out_features=2)):
        with pytest.raises(KeyError, match=r"missing modality \['audio'\].*expected keys \['visual', 'audio'\]"):
            fusion({"visual": x["visual"]})
        with pytest.raises(KeyError, match=r"unknown modality \['vision'\]; expected keys \['visual', 'audio'\]"):
            fusion({**x, "vision": x["visual"]})  # a misspelt or extra modality is not silently dropped
        with pytest.raises(ValueError, match=r"inputs\['audio'\]: expected shape \(B, 5\), got \(4, 6\)"):
            fusion({"visual": x["visual"], "audio": torch.randn(4, 6)})
        with pytest.raises(ValueError, match=r"expected 4 rows"):
            fusion({"visual": x["visual"], "audio": torch.randn(3, 5)})
        with pytest.raises(TypeError, match="expected a dict of modality"):
            fusion(x["visual"])
    enc = ModalityEncoders(DIMS, hidden=4, out_features=2)
    with pytest.raises(KeyError, match=r"unknown modality 'text'; expected one of \['visual', 'audio'\]"):
        enc(x["audio"], modality="text")
    with pytest.raises(ValueError, match=r"audio: expected shape \(B, 5\), got \(4, 8\)"):
        enc(x["visual"], modality="audio")


def test_fusion_models_are_registered_with_a_dict_in_shape():
    torch.manual_seed(0)
    shape = {"visual": (8,), "audio": (5,)}
    for name in ("early-fusion", "late-fusion"):
        model = MODELS.create({"name": name, "hidden": 4, "out_features": 3}, in_shape=shape)
        assert model(modalities()).shape == (4, 3)
    with pytest.raises(TypeError, match="in_shape must be a non-empty mapping modality"):
        MODELS.create("early-fusion", in_shape=(13,))
    with pytest.raises(ValueError, match="disagree"):
        EarlyFusion({"visual": 8}, in_shape={"visual": (9,)})


@pytest.mark.parametrize("pool", ["mean", "max", "attention", {"name": "netvlad", "clusters": 2},
                                  {"name": "recurrent", "hidden": 5, "cell": "lstm"}])
def test_video_model_from_the_registry(pool):
    torch.manual_seed(0)
    model = MODELS.create({"name": "video", "pool": pool, "hidden": (8,), "out_features": 4}, in_shape=(5, D))
    x, mask = batch(dtype=torch.float32)
    z = model(x, mask)
    assert z.shape == (3, 4)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    padded = torch.cat([x, torch.full((3, 2, D), 1e9)], dim=1)
    torch.testing.assert_close(model(padded, torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], 1)), z)
    assert model(x).shape == (3, 4)


def test_video_model_with_a_pooling_module_and_bad_inputs():
    torch.manual_seed(0)
    model = VideoEmbedder(D, pool=NetVLAD(D, clusters=2), hidden=(), out_features=3, normalize=False)
    assert model.head.net[0].in_features == 2 * D
    x, mask = batch(dtype=torch.float32)
    assert model(x, mask).shape == (3, 3)
    with pytest.raises(ValueError, match=r"D = 6.*\(3, 5, 4\)"):
        model(torch.randn(3, 5, 4))
    # a clip with no real frame pools to 0 and would embed to the head's bias, like every other empty clip
    with pytest.raises(ValueError, match=r"rows \[1\] have no real frame"):
        model(x, mask & torch.tensor([True, False, True]).unsqueeze(1))
    with pytest.raises(ValueError, match=r"rows \[0, 1\] have no real frame.*T = 0"):
        model(torch.randn(2, 0, D))
    with pytest.raises(ValueError, match=r"in_shape: expected \(T, D\)"):
        MODELS.create("video", in_shape=(D,))
    with pytest.raises(KeyError, match="unknown pooling 'sum'"):
        VideoEmbedder(D, pool="sum")
