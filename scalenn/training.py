"""Training and evaluation loops with a tqdm bar per epoch that ends as one line of a training
log: `<step> epoch 2/3: 100%|####| 469/469 [00:09, loss=0.312, top1=88.6%]`.

Loss functions take (logits, targets, inputs) so a DistillationLoss (which runs the teacher on
the inputs) and plain cross entropy plug in alike. `on_step` is called after each optimizer step
(gradual pruning schedules hook in there).
"""
import sys
from typing import Callable, Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, inputs=None) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


class TensorBatches:
    """Re-iterable mini-batches over in-memory tensors, reshuffled on every pass, with a len()
    (so progress bars know the number of steps)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
                 seed: int = 0, augment: Optional[Callable] = None):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"TensorBatches: {x.shape[0]} inputs but {y.shape[0]} labels")
        if batch_size < 1:
            raise ValueError(f"TensorBatches: batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment  # fn(x_batch, generator) -> x_batch, applied per batch


    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self):
        from .data import batches
        it = batches(self.x, self.y, self.batch_size, self.shuffle, self.generator)
        if self.augment is None:
            return it
        return ((self.augment(x, self.generator), y) for x, y in it)


def flip_and_shift(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                   max_shift: int = 2) -> torch.Tensor:
    """Image augmentation for [N, C, H, W] batches: a random horizontal flip for half of the
    images and a random translation of up to max_shift pixels (filled with the batch's minimum,
    the background of normalized Fashion-MNIST). Vectorized: one gather for the whole batch."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift <= 0 or n == 0:
        return x
    k = max_shift
    padded = torch.nn.functional.pad(x, (k, k, k, k), value=float(x.min()))
    oy = torch.randint(0, 2 * k + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * k + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]       # [n, 1, h, 1]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]       # [n, 1, 1, w]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows, cols]


def _batches(loader) -> Iterable:
    """A loader may be re-iterable (a DataLoader, a list) or a callable returning a fresh
    iterable per epoch (e.g. lambda: scalenn.data.batches(x, y, 128))."""
    return loader() if callable(loader) else loader


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                loss_fn: LossFn = cross_entropy, desc: str = "train",
                on_step: Optional[Callable[[], None]] = None, max_steps: Optional[int] = None,
                progress: bool = True) -> Tuple[float, float]:
    """One pass over `loader`; returns (mean loss, top-1 accuracy in [0, 1]) on the training
    batches as seen during the pass."""
    model.train()
    batches = _batches(loader)
    total = max_steps
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    bar = tqdm(batches, total=total, desc=desc, disable=not progress, leave=True,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = seen = steps = 0
    for x, y in bar:
        logits = model(x)
        loss = loss_fn(logits, y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * y.shape[0]
            correct += int((logits.argmax(-1) == y).sum())
            seen += y.shape[0]
        steps += 1
        if steps % 20 == 0 or steps == total:
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", top1=f"{100 * correct / seen:.1f}%")
        if max_steps is not None and steps >= max_steps:
            break
    bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.3f}",
                    top1=f"{100 * correct / max(seen, 1):.1f}%")
    bar.close()
    if seen == 0:
        raise ValueError("train_epoch: the training data yielded no batch")
    return float(loss_sum) / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] of `model` on (x, y), in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(x.shape[0], 1)


def fit(model: nn.Module, loader, optimizer: torch.optim.Optimizer, epochs: int,
        loss_fn: LossFn = cross_entropy, desc: str = "train",
        eval_fn: Optional[Callable[[nn.Module], float]] = None,
        on_step: Optional[Callable[[], None]] = None, on_epoch: Optional[Callable[[int], None]] = None,
        max_steps: Optional[int] = None, progress: bool = True):
    """`epochs` passes of train_epoch; returns a list of per-epoch dicts (loss, train_top1,
    and test_top1 when eval_fn is given; eval_fn(model) -> accuracy in [0, 1])."""
    history = []
    for epoch in range(epochs):
        loss, top1 = train_epoch(model, loader, optimizer, loss_fn,
                                 desc=f"{desc} epoch {epoch + 1}/{epochs}", on_step=on_step,
                                 max_steps=max_steps, progress=progress)
        row = {"epoch": epoch + 1, "loss": loss, "train_top1": top1}
        if eval_fn is not None:
            row["test_top1"] = float(eval_fn(model))
        if on_epoch is not None:
            on_epoch(epoch + 1)
        history.append(row)
    return history
