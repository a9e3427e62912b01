"""scalenn.DistillationLoss against the formula written out by hand in float64."""
import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn import DistillationLoss


def reference(student_logits, teacher_logits, targets, T, alpha):
    """Hinton et al. 2015, spelled out: alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE."""
    s = student_logits.double()
    t = teacher_logits.double()
    log_ps = s / T - torch.log(torch.exp(s / T).sum(-1, keepdim=True))
    log_pt = t / T - torch.log(torch.exp(t / T).sum(-1, keepdim=True))
    kl = (torch.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
    log_p = s - torch.log(torch.exp(s).sum(-1, keepdim=True))
    ce = -log_p[torch.arange(s.shape[0]), targets].mean()
    return alpha * T * T * kl + (1 - alpha) * ce


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.5), (4.0, 0.0), (4.0, 1.0), (10.0, 0.9)])
@pytest.mark.parametrize("n,c", [(1, 2), (7, 10), (64, 3)])
def test_matches_hand_computed_reference(T, alpha, n, c):
    teacher = nn.Linear(5, c).double()
    student = nn.Linear(5, c).double()
    x = torch.randn(n, 5, dtype=torch.float64)
    y = torch.randint(0, c, (n,))
    loss_fn = DistillationLoss(teacher, temperature=T, alpha=alpha)
    logits = student(x)
    loss = loss_fn(logits, y, x)
    with torch.no_grad():
        expected = reference(logits, teacher(x), y, T, alpha)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    # gradients reach the student only; the teacher is not a parameter of the loss
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    assert list(loss_fn.parameters()) == []


def test_gradient_matches_reference_and_teacher_is_untouched():
    teacher, student = nn.Linear(6, 4).double(), nn.Linear(6, 4).double()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 4, (9,))
    s1 = student(x)
    DistillationLoss(teacher, 3.0, 0.6)(s1, y, x).backward()
    g1 = student.weight.grad.clone()
    student.zero_grad()
    s2 = student(x)
    reference(s2, teacher(x).detach(), y, 3.0, 0.6).backward()
    torch.testing.assert_close(g1, student.weight.grad, rtol=1e-10, atol=1e-12)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert teacher.training  # mode restored after the loss ran it in eval mode


def test_same_model_has_zero_soft_term_and_precomputed_teacher_logits():
    net = nn.Linear(3, 5)
    x, y = torch.randn(4, 3), torch.randint(0, 5, (4,))
    loss_fn = DistillationLoss(net, alpha=1.0)
    assert abs(float(loss_fn(net(x), y, x))) < 1e-6
    t = torch.randn(4, 5)
    a = loss_fn(net(x), y, teacher_logits=t)
    torch.testing.assert_close(a.double(), reference(net(x), t, y, 4.0, 1.0), rtol=1e-5, atol=1e-6)


def test_feature_matching_on_named_layers():
    def make():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    teacher, student = make(), make()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    loss_fn = DistillationLoss(teacher, temperature=2.0, alpha=0.3, features=["0", "1"],
                               feature_weight=0.5).attach(student)
    logits = student(x)
    loss = loss_fn(logits, y, x)
    with torch.no_grad():
        h_s, h_t = student[0](x), teacher[0](x)
        feat = ((h_s - h_t) ** 2).mean() + ((h_s.relu() - h_t.relu()) ** 2).mean()
        expected = reference(logits, teacher(x), y, 2.0, 0.3) + 0.5 * feat
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    assert loss_fn.last_terms["features"] > 0
    # student -> teacher name mapping, and shape mismatch is reported with both shapes
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    bad = DistillationLoss(teacher, features={"0": "0"}).attach(other)
    with pytest.raises(ValueError, match=r"feature '0' has shape \(10, 6\).*\(10, 8\)"):
        bad(other(x), y, x)
    loss_fn.remove_hooks()
    bad.remove_hooks()


def test_bad_arguments_are_clear_errors():
    net = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        DistillationLoss("model")
    for T in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            DistillationLoss(net, temperature=T)
    for a in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            DistillationLoss(net, alpha=a)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        DistillationLoss(net, features=["nope"])
    with pytest.raises(ValueError, match="attach"):
        DistillationLoss(nn.Sequential(net), features=["0"])(torch.randn(2, 2), torch.zeros(2).long(),
                                                              torch.randn(2, 3))
    with pytest.raises(ValueError, match="same classes"):
        DistillationLoss(nn.Linear(3, 4))(torch.randn(2, 2), torch.zeros(2).long(), torch.randn(2, 3))
    with pytest.raises(ValueError, match="inputs"):
        DistillationLoss(net)(torch.randn(2, 2), torch.zeros(2).long())


def test_exported_at_top_level():
    assert scalenn.DistillationLoss is DistillationLoss
