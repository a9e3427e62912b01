"""scalenn.prune / remove_masks / PruningSchedule: every pattern's mask structure, layer and
global scope, masks surviving training, the cubic schedule, channel pruning on Sequential
models, bad input."""
import copy
import math

import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn.compress.prune import current_mask


def mlp():
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 8))


def masks(model):
    return {n: current_mask(m) for n, m in model.named_modules() if current_mask(m) is not None}


@pytest.mark.parametrize("s", [0.0, 0.3, 0.9, 0.97])
def test_unstructured_layer_scope_exact_and_by_magnitude(s):
    model = mlp()
    w0 = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = scalenn.prune(model, s)
    for name, mask in masks(model).items():
        assert int((mask == 0).sum()) == round(s * mask.numel())
        kept, dropped = w0[name][mask != 0].abs(), w0[name][mask == 0].abs()
        if kept.numel() and dropped.numel():
            assert dropped.max() <= kept.min()
    assert abs(report.sparsity - s) < 0.01


def test_global_scope_single_threshold():
    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(10)  # big weights: global pruning should spare this layer more
    w0 = torch.cat([m.weight.detach().abs().reshape(-1) for m in model if isinstance(m, nn.Linear)])
    report = scalenn.prune(model, 0.8, scope="global")
    allmask = torch.cat([m.reshape(-1) for m in masks(model).values()])
    assert int((allmask == 0).sum()) == round(0.8 * allmask.numel())
    assert w0[allmask == 0].max() <= w0[allmask != 0].min()
    per_layer = {l.name: l.sparsity for l in report.layers}
    assert per_layer["0"] < per_layer["2"]


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_nm_pattern(pattern, n, m):
    model = mlp()
    scalenn.prune(model, 1 - n / m, pattern)
    for mask in masks(model).values():
        groups = mask.reshape(mask.shape[0], -1, m).sum(dim=2)
        assert torch.equal(groups, torch.full_like(groups, n))
    # gradual N:M: a lower sparsity gives a subset of an N:M pattern
    model = mlp()
    scalenn.prune(model, 0.25, "2:4")
    for mask in masks(model).values():
        assert mask.reshape(mask.shape[0], -1, 4).sum(dim=2).min() >= 2
        assert int((mask == 0).sum()) == round(0.25 * mask.numel())


@pytest.mark.parametrize("R,C", [(1, 16), (4, 4), (2, 8)])
def test_block_pattern(R, C):
    model = mlp()
    scalenn.prune(model, 0.75, f"block:{R}x{C}", filter=["^0$", "^2$"])
    for mask in masks(model).values():
        blocks = mask.reshape(mask.shape[0] // R, R, mask.shape[1] // C, C).sum(dim=(1, 3))
        assert set(blocks.unique().tolist()) <= {0.0, float(R * C)}
        assert int((blocks == 0).sum()) == round(0.75 * blocks.numel())


def test_conv_layers_are_pruned_too():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    scalenn.prune(model, 0.5, "2:4")
    m0 = current_mask(model[0])
    assert m0.shape == model[0].weight.shape
    assert torch.equal(m0.reshape(8, -1, 4).sum(dim=2), torch.full((8, 9), 2.0))
    assert model(torch.randn(2, 4, 6, 6)).shape == (2, 3)


def test_masks_survive_training_and_remove_masks():
    model = mlp()
    scalenn.prune(model, 0.8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(6):
        x = torch.randn(32, 64)
        loss = model(x).pow(2).mean()
        (opt if step % 2 else opt2).zero_grad()
        loss.backward()
        for name, mask in masks(model).items():
            orig = model.get_submodule(name).parametrizations.weight.original
            assert torch.all(orig.grad[mask == 0] == 0)  # no gradient reaches pruned weights
        (opt if step % 2 else opt2).step()
        for name, mask in masks(model).items():
            assert torch.all(model.get_submodule(name).weight[mask == 0] == 0)
    saved = {n: m.clone() for n, m in masks(model).items()}
    x = torch.randn(4, 64)
    y = model(x)
    assert scalenn.remove_masks(model) == 3
    assert masks(model) == {}
    for name, mask in saved.items():
        w = model.get_submodule(name).weight
        assert isinstance(w, nn.Parameter) and torch.all(w[mask == 0] == 0)
    torch.testing.assert_close(model(x), y)


def test_repruning_only_removes_more():
    model = mlp()
    scalenn.prune(model, 0.5)
    first = {n: m.clone() for n, m in masks(model).items()}
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.parametrizations.weight.original.normal_()  # scramble magnitudes
    scalenn.prune(model, 0.7)
    for n, m in masks(model).items():
        assert not ((m != 0) & (first[n] == 0)).any()


def test_schedule_values_and_updates():
    model = mlp()
    sched = scalenn.PruningSchedule(model, 0.9, start_step=10, end_step=110, frequency=20)
    assert sched.sparsity_at(0) == 0.0 and sched.sparsity_at(10) == 0.0
    for t in (30, 60, 95):
        expect = 0.9 + (0.0 - 0.9) * (1 - (t - 10) / 100) ** 3
        assert math.isclose(sched.sparsity_at(t), expect, rel_tol=1e-12)
    assert sched.sparsity_at(110) == 0.9 and sched.sparsity_at(10 ** 6) == 0.9
    values = [sched.sparsity_at(t) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone
    updates = []
    prev = None
    for t in range(130):
        s = sched.step()
        if s != prev:
            updates.append(t)
            prev = s
        achieved = 1 - sum(int(m.count_nonzero()) for m in masks(model).values()) / \
            max(1, sum(m.numel() for m in masks(model).values()))
        if masks(model):
            assert abs(achieved - s) < 0.01
    assert all(sched.is_update_step(t) for t in (10, 30, 50, 70, 90, 110))
    assert not sched.is_update_step(20) and not sched.is_update_step(111)
    assert abs(sched.current_sparsity - 0.9) < 1e-12
    sched2 = scalenn.PruningSchedule(mlp(), 0.5, 0, 10, 1, pattern="2:4", initial_sparsity=0.1)
    assert sched2.sparsity_at(0) == 0.1


def test_channel_pruning_shrinks_sequential_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(),
                          nn.Sequential(nn.Linear(32, 16), nn.ReLU()), nn.Linear(16, 5))
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    ref = copy.deepcopy(model)
    x = torch.randn(3, 1, 8, 8)
    report = scalenn.prune(model, 0.5, "channel")
    assert model[0].out_channels == 4 and model[1].num_features == 4
    assert model[5].in_features == 4 * 16 and model[5].out_features == 16
    assert model[7][0].in_features == 16 and model[7][0].out_features == 8
    assert model[8].in_features == 8 and model[8].out_features == 5  # output layer kept
    assert len(report.layers) == 3
    # Equivalent to the original with the dropped channels' contributions cut at the consumer.
    kept0 = ref[0].weight.detach().reshape(8, -1).norm(dim=1).topk(4).indices
    drop0 = sorted(set(range(8)) - set(kept0.tolist()))
    with torch.no_grad():
        cols = torch.tensor([c * 16 + i for c in drop0 for i in range(16)])
        ref[5].weight[:, cols] = 0
        kept5 = ref[5].weight.norm(dim=1).topk(16).indices
        drop5 = sorted(set(range(32)) - set(kept5.tolist()))
        ref[7][0].weight[:, drop5] = 0
        kept7 = ref[7][0].weight.norm(dim=1).topk(8).indices
        drop7 = sorted(set(range(16)) - set(kept7.tolist()))
        ref[8].weight[:, drop7] = 0
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_channel_pruning_refuses_what_it_cannot_follow():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ValueError, match="Sequential"):
        scalenn.prune(Branchy(), 0.5, "channel")
    with pytest.raises(ValueError, match="LayerNorm"):
        scalenn.prune(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2)), 0.5,
                      "channel")
    with pytest.raises(ValueError, match="scope"):
        scalenn.prune(mlp(), 0.5, "channel", scope="global")


def test_bad_input_and_edge_cases():
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            scalenn.prune(mlp(), bad)
    with pytest.raises(TypeError, match="sparsity"):
        scalenn.prune(mlp(), "0.5")
    with pytest.raises(ValueError, match="pattern"):
        scalenn.prune(mlp(), 0.5, "3:2")
    with pytest.raises(ValueError, match="pattern"):
        scalenn.prune(mlp(), 0.5, "diagonal")
    with pytest.raises(ValueError, match="at most 0.5"):
        scalenn.prune(mlp(), 0.9, "2:4")
    with pytest.raises(ValueError, match="divisible by 4"):
        scalenn.prune(nn.Sequential(nn.Linear(6, 4)), 0.5, "2:4")
    with pytest.raises(ValueError, match="does not divide"):
        scalenn.prune(nn.Sequential(nn.Linear(64, 6)), 0.5, "block:4x4")
    with pytest.raises(ValueError, match="scope"):
        scalenn.prune(mlp(), 0.5, scope="model")
    with pytest.raises(ValueError, match="no nn.Linear"):
        scalenn.prune(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="channel"):
        scalenn.PruningSchedule(mlp(), 0.5, 0, 10, 1, pattern="channel")
    with pytest.raises(ValueError, match="start_step"):
        scalenn.PruningSchedule(mlp(), 0.5, 10, 5, 1)
    with pytest.raises(ValueError, match="frequency"):
        scalenn.PruningSchedule(mlp(), 0.5, 0, 5, 0)
    # an all-zero weight and a fully pruned row: correct results, no crash
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.zero_()
        model[2].weight[1] = 0
    scalenn.prune(model, 0.5)
    x = torch.randn(3, 16)
    ref = model(x)
    model, _ = scalenn.sparsify(model, force=True, batch_sizes=(1,))
    torch.testing.assert_close(model(x), ref)
