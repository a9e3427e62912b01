"""Knowledge distillation (Hinton, Vinyals, Dean 2015): a student learns from a teacher's softened
output distribution as well as from the labels, optionally also matching intermediate features.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * cross_entropy(student, labels)
         + feature_weight * sum over named layers of mse(student_feature, teacher_feature)

The T^2 factor keeps the soft term's gradient magnitude independent of T (the gradients of the
softened KL scale as 1/T^2), so alpha keeps its meaning when the temperature changes.

Usage:
    distill = scalenn.DistillationLoss(teacher, temperature=4.0, alpha=0.5)
    logits = student(x)
    loss = distill(logits, y, x)            # runs the teacher on x (no grad) itself
With features=["features.3"] (same name in both models, or a dict student_name -> teacher_name),
call distill.attach(student) once so the student's activations are captured by forward hooks.
"""
import math
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

FeatureSpec = Optional[Union[Sequence[str], Mapping[str, str]]]


def _capture_hook(store: Dict[str, torch.Tensor], key: str):
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"DistillationLoss: layer {key!r} returned {type(output).__name__}; "
                            "feature matching needs a layer whose output is one tensor")
        store[key] = output
    return hook


def _submodule(model: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"DistillationLoss: the {role} has no layer named {name!r}; "
                         f"its layers are {names[:20]}") from None


class DistillationLoss(nn.Module):
    """Hinton soft-target loss with T^2 scaling plus optional intermediate-feature matching.

    alpha is the weight of the soft (teacher) term; 1 - alpha weighs the hard-label cross entropy.
    The teacher runs in eval mode under torch.no_grad(); its parameters are never updated.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5,
                 features: FeatureSpec = None, feature_weight: float = 1.0):
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"DistillationLoss: teacher must be an nn.Module, got "
                            f"{type(teacher).__name__}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
                or temperature <= 0:
            raise ValueError(f"DistillationLoss: temperature must be a finite number > 0, "
                             f"got {temperature!r}")
        if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillationLoss: alpha must be in [0, 1], got {alpha!r}")
        if not isinstance(feature_weight, (int, float)) or not math.isfinite(feature_weight) \
                or feature_weight < 0:
            raise ValueError(f"DistillationLoss: feature_weight must be a finite number >= 0, "
                             f"got {feature_weight!r}")
        # Kept out of self._modules so that the teacher's parameters are not part of this loss's
        # (or a student's) parameters/state_dict and are never handed to an optimizer.
        object.__setattr__(self, "teacher", teacher)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_weight = float(feature_weight)
        if features is None:
            self.feature_pairs: Dict[str, str] = {}
        elif isinstance(features, Mapping):
            self.feature_pairs = {str(s): str(t) for s, t in features.items()}
        elif isinstance(features, str):
            self.feature_pairs = {features: features}
        else:
            self.feature_pairs = {str(n): str(n) for n in features}
        self._teacher_feats: Dict[str, torch.Tensor] = {}
        self._student_feats: Dict[str, torch.Tensor] = {}
        self._handles = []
        self._student_attached = False
        for s_name, t_name in self.feature_pairs.items():
            layer = _submodule(teacher, t_name, "teacher")
            self._handles.append(layer.register_forward_hook(
                _capture_hook(self._teacher_feats, s_name)))
        self.last_terms: Dict[str, float] = {}

    def attach(self, student: nn.Module) -> "DistillationLoss":
        """Capture the student's named layers (needed only when features are matched)."""
        for s_name in self.feature_pairs:
            layer = _submodule(student, s_name, "student")
            self._handles.append(layer.register_forward_hook(
                _capture_hook(self._student_feats, s_name)))
        self._student_attached = True
        return self

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._student_attached = False

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T^2 * KL(teacher_T || student_T), averaged over the batch (rows)."""
        t = self.temperature
        c = student_logits.shape[-1]
        log_p_student = F.log_softmax(student_logits.reshape(-1, c) / t, dim=-1)
        log_p_teacher = F.log_softmax(teacher_logits.reshape(-1, c).to(student_logits.dtype) / t,
                                      dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return kl * (t * t)

    def forward(self, student_logits: torch.Tensor, targets: torch.Tensor,
                inputs: Optional[torch.Tensor] = None,
                teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        if teacher_logits is None:
            if inputs is None:
                raise ValueError("DistillationLoss: pass the batch's inputs (to run the teacher) "
                                 "or precomputed teacher_logits")
            if self.feature_pairs and not self._student_attached:
                raise ValueError("DistillationLoss: features are matched, call "
                                 "loss.attach(student) once before training")
            self._teacher_feats.clear()
            was_training = self.teacher.training
            self.teacher.eval()
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            self.teacher.train(was_training)
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"DistillationLoss: teacher output shape {tuple(teacher_logits.shape)}"
                             f" differs from the student's {tuple(student_logits.shape)}; "
                             "student and teacher must predict the same classes")
        soft = self.soft_loss(student_logits, teacher_logits.detach())
        hard = F.cross_entropy(student_logits, targets)
        loss = self.alpha * soft + (1.0 - self.alpha) * hard
        feat = student_logits.new_zeros(())
        for name in self.feature_pairs:
            if name not in self._student_feats or name not in self._teacher_feats:
                raise ValueError(f"DistillationLoss: layer {name!r} produced no output in this "
                                 "step; does the forward pass go through it?")
            s, t = self._student_feats.pop(name), self._teacher_feats.pop(name)
            if s.shape != t.shape:
                raise ValueError(f"DistillationLoss: feature {name!r} has shape {tuple(s.shape)} "
                                 f"in the student but {tuple(t.shape)} in the teacher")
            feat = feat + F.mse_loss(s, t.detach().to(s.dtype))
        if self.feature_pairs:
            loss = loss + self.feature_weight * feat
        self.last_terms = {"soft": float(soft.detach()), "hard": float(hard.detach()),
                           "features": float(feat.detach())}
        return loss

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, "
                f"features={list(self.feature_pairs)}")
