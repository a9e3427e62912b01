"""freeze / unfreeze / replace_head / param_groups and the pretrained MNIST CNN."""
import importlib.util

import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn.models import MnistCNN, mlp, mnist_cnn
from scalenn.transfer import find_head


def test_freeze_except_and_unfreeze():
    model = MnistCNN()
    trainable = scalenn.freeze(model, except_=["classifier"])
    assert trainable == ["classifier.0.weight", "classifier.0.bias", "classifier.2.weight",
                         "classifier.2.bias"]
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith("classifier.")
    # a regex over module names, and a single parameter name
    assert scalenn.freeze(model, except_=r"features\.\d") == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"]
    assert scalenn.freeze(model, except_="classifier.2.bias") == ["classifier.2.bias"]
    assert scalenn.freeze(model) == []
    assert len(scalenn.unfreeze(model, only="features.3")) == 2
    assert len(scalenn.unfreeze(model)) == 8 and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="matches no module"):
        scalenn.freeze(model, except_=["clasifier"])
    with pytest.raises(TypeError, match="nn.Module"):
        scalenn.freeze("model")


def test_frozen_backbone_gets_no_update():
    model = MnistCNN()
    scalenn.freeze(model, except_=["classifier.2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.arange(4)).backward()
    opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) == (not k.startswith("classifier.2"))


def test_replace_head_finds_last_linear():
    model = MnistCNN()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    head = scalenn.replace_head(model, num_classes=5)
    assert model.classifier[2] is head and (head.in_features, head.out_features) == (128, 5)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    for k, v in model.state_dict().items():
        if not k.startswith("classifier.2"):
            assert torch.equal(v, old[k])
    nested = nn.ModuleDict({"body": nn.Sequential(nn.Linear(4, 6), nn.ReLU()),
                            "heads": nn.ModuleList([nn.Linear(6, 2, bias=False).double()])})
    h = scalenn.replace_head(nested, 7)
    assert nested["heads"][0] is h and h.bias is None and h.weight.dtype == torch.float64
    assert find_head(mlp())[0] == "5"
    h = scalenn.replace_head(model, 3, head="classifier.0")
    assert model.classifier[0] is h
    with pytest.raises(ValueError, match="no Linear"):
        scalenn.replace_head(nn.Sequential(nn.ReLU()), 3)
    with pytest.raises(ValueError, match="num_classes"):
        scalenn.replace_head(model, 0)
    with pytest.raises(ValueError, match="not a Linear"):
        scalenn.replace_head(model, 3, head="features.0")


def test_param_groups_split_head_and_backbone():
    model = MnistCNN()
    groups = scalenn.param_groups(model, backbone_lr=1e-4, head_lr=1e-2)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    head_ids = {id(p) for p in model.classifier[2].parameters()}
    assert {id(p) for p in groups[1]["params"]} == head_ids
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    opt = torch.optim.SGD(groups, lr=0.5)
    before = model.features[0].weight.clone(), model.classifier[2].weight.clone()
    nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 1])).backward()
    grads = model.features[0].weight.grad.clone(), model.classifier[2].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(model.features[0].weight, before[0] - 1e-4 * grads[0])
    torch.testing.assert_close(model.classifier[2].weight, before[1] - 1e-2 * grads[1])
    g2 = scalenn.param_groups(model, 0.0, 1.0, head=["classifier"])
    assert len(g2[1]["params"]) == 4
    with pytest.raises(ValueError, match="head_lr"):
        scalenn.param_groups(model, 1e-3, -1)


@pytest.mark.skipif(importlib.util.find_spec("ccexam") is None, reason="ccexam not installed")
def test_pretrained_cnn_loads_ccexam_weights_exactly():
    from scalenn.models import pretrained_mnist_state
    state = pretrained_mnist_state()
    model = mnist_cnn(pretrained=True)
    assert set(state) == set(model.state_dict())
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        model(torch.randn(2, 1, 20, 20))


def test_compressed_model_reloads_and_trains_a_new_head_without_decompressing(tmp_path):
    """Model reuse (issue 8 item 5): a pruned+packed (SparseLinear) and int8 (Int8Linear) CNN
    written by scalenn.save loads into a freshly constructed mnist_cnn; a new head then trains
    on top while the compressed layers stay compressed and frozen."""
    torch.manual_seed(0)
    model = mnist_cnn()
    only_fc1 = lambda m, name: name == "classifier.0"
    scalenn.prune(model, 0.9, filter=only_fc1)
    model, _ = scalenn.sparsify(model, filter=only_fc1, force=True)
    model, _ = scalenn.quantize(model, filter=["classifier\\.2"], force=True)
    assert isinstance(model.classifier[0], scalenn.nn.SparseLinear)
    assert isinstance(model.classifier[2], scalenn.nn.Int8Linear)
    path = str(tmp_path / "cnn.safetensors")
    scalenn.save(model, path)

    fresh = scalenn.load(mnist_cnn(), path).eval()
    x = torch.randn(64, 1, 28, 28)
    assert isinstance(fresh.classifier[0], scalenn.nn.SparseLinear)
    assert isinstance(fresh.classifier[2], scalenn.nn.Int8Linear)
    torch.testing.assert_close(fresh(x), model.eval()(x), rtol=0, atol=0)

    head = scalenn.replace_head(fresh, num_classes=3)
    assert fresh.classifier[2] is head and type(head) is nn.Linear
    assert scalenn.freeze(fresh, except_=["classifier.2"]) == ["classifier.2.weight",
                                                               "classifier.2.bias"]
    frozen = {k: v.clone() for k, v in fresh.state_dict().items() if not k.startswith("classifier.2")}
    with torch.no_grad():  # labels a linear head on the frozen (compressed) features can learn
        hidden = fresh.classifier[1](fresh.classifier[0](fresh.features(x).flatten(1)))
        y = (hidden @ torch.randn(128, 3)).argmax(1)
    opt = torch.optim.Adam(head.parameters(), lr=5e-2)
    losses = []
    fresh.train()
    for _ in range(40):
        loss = nn.functional.cross_entropy(fresh(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert isinstance(fresh.classifier[0], scalenn.nn.SparseLinear)  # never decompressed
    for k, v in fresh.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert fresh.classifier[0].values.grad is None
