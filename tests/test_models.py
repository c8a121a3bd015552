import pytest
import torch

from deepmetric import models


@pytest.mark.parametrize("spec,in_shape", [
    ({"name": "linear", "out_features": 5}, (12,)),
    ({"name": "mlp", "hidden": [7, 6], "out_features": 5, "activation": "tanh"}, (12,)),
    ({"name": "cnn", "channels": [4, 4, 4, 4], "out_features": 5}, (1, 28, 28)),
])
@pytest.mark.parametrize("normalize", [False, True])
def test_output_shape_and_normalisation(spec, in_shape, normalize):
    model = models.create({**spec, "normalize": normalize}, in_shape=in_shape)
    z = model(torch.randn(3, *in_shape))
    assert z.shape == (3, 5)
    norms = z.norm(dim=1)
    if normalize:
        torch.testing.assert_close(norms, torch.ones(3))
    else:
        assert not torch.allclose(norms, torch.ones(3))


def test_linear_head_is_a_mahalanobis_map():
    torch.manual_seed(0)
    head = models.LinearHead(in_shape=(4,), out_features=3)
    x, y = torch.randn(4), torch.randn(4)
    L = head.linear.weight
    d2 = (head(x[None]) - head(y[None])).pow(2).sum()
    torch.testing.assert_close(d2, (x - y) @ (L.T @ L) @ (x - y))


def test_mlp_tanh_final_activation_bounds_the_output():
    head = models.MLPHead(in_shape=(4,), hidden=(8,), out_features=3, activation="tanh", final_activation=True)
    assert head(100 * torch.randn(10, 4)).abs().max() <= 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation: expected one of"):
        models.MLPHead(in_shape=(4,), activation="gelu2")
    with pytest.raises(ValueError, match=r"expects images \(C, H, W\)"):
        models.SmallCNN(in_shape=(64,))
    with pytest.raises(ValueError, match=r"halves the image 4 times, so it needs images of at least 16x16"):
        models.SmallCNN(in_shape=(1, 14, 14))  # BatchNorm failed on the 1x1 map with a message naming neither
    with pytest.raises(KeyError, match="unknown model 'resnet9000'; known models: cnn"):
        models.create("resnet9000", in_shape=(4,))


def test_frozen_extractor_loads_local_weights_and_stays_fixed(tmp_path):
    torch.manual_seed(0)
    backbone = {"name": "mlp", "hidden": [8], "out_features": 6}
    source = models.create(backbone, in_shape=(4,))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = models.create({"name": "frozen", "backbone": backbone, "weights": str(tmp_path / "w.pt"),
                           "head": {"name": "linear", "out_features": 3}}, in_shape=(4,))
    x = torch.randn(5, 4)
    torch.testing.assert_close(model.backbone(x), source(x))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(x).pow(2).sum().backward()
    opt.step()
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert model.head.linear.weight.grad is not None


def test_frozen_extractor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights: no such file .*nope.pt"):
        models.create({"name": "frozen", "backbone": "linear", "weights": str(tmp_path / "nope.pt")}, in_shape=(4,))
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the backbone"):
        models.create({"name": "frozen", "backbone": "linear", "weights": str(tmp_path / "bad.pt")}, in_shape=(4,))
