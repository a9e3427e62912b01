"""scalenn.compress(model, recipe, train_loader, eval_fn): run a compression recipe in Python.

Steps, in order, each recorded in the returned report:
  1. prune (oneshot before fine-tuning, or gradual: scalenn.PruningSchedule stepped once per
     optimizer step during fine-tuning);
  2. fine-tune (with scalenn.DistillationLoss from the model as given when [distill] is set);
  3. pack: masked Linear -> scalenn.nn.SparseLinear (scalenn.sparsify; its measured cost model
     keeps a layer dense where the sparse kernel loses, unless [prune] force = true), or bake the
     masks into dense weights (scalenn.remove_masks) when [prune] pack = false;
  4. quantize (scalenn.quantize: nn.Linear -> Int8Linear and SparseLinear -> SparseInt8Linear
     where its measured cost model says int8 pays, or every one with [quantize] force = true).
Only nn.Linear layers are pruned: convolutions have no sparse module to be packed into, and a
pruned conv would only carry its mask and unmasked original around.
"""
import copy
import re
import sys
import time
import types
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .. import training
from .distill import DistillationLoss
from .measure import effective_nonzero, linear_sparsity
from .recipe import load_recipe, parse_recipe

RecipeLike = Union[str, Dict[str, Dict[str, Any]]]


def layer_filter(layers, skip) -> Callable[[nn.Module, str], bool]:
    """fn(module, name) for the scalenn filter= argument of prune/PruningSchedule/sparsify:
    nn.Linear layers whose names match any `layers` regex (re.search; all when empty) and no
    `skip` regex (whole name)."""
    keep = [re.compile(p) for p in layers]
    drop = [re.compile(p) for p in skip]
    return lambda module, name: (isinstance(module, nn.Linear)
                                 and (not keep or any(p.search(name) for p in keep))
                                 and not any(p.fullmatch(name) for p in drop))


def _optimizer(model: nn.Module, ft: Dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("compress: the model has no trainable parameter to fine-tune; "
                         "unfreeze it (scalenn.unfreeze) or set [finetune] epochs = 0")
    if ft["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=ft["lr"], momentum=ft["momentum"],
                               weight_decay=ft["weight_decay"])
    cls = torch.optim.AdamW if ft["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=ft["lr"], weight_decay=ft["weight_decay"])


def _steps_per_epoch(loader, max_steps: int) -> int:
    batches = training._batches(loader)
    n = len(batches) if hasattr(batches, "__len__") else sum(1 for _ in batches)
    return min(n, max_steps) if max_steps else n


def _pruning_schedule(model, p: Dict[str, Any], total_steps: int, filt):
    import scalenn
    kwargs = dict(final_sparsity=p["sparsity"], start_step=int(p["start"] * total_steps),
                  end_step=max(1, int(p["end"] * total_steps)), frequency=p["frequency"],
                  pattern=p["pattern"], initial_sparsity=p["initial_sparsity"])
    return scalenn.PruningSchedule(model, scope=p["scope"], filter=filt, **kwargs)


def compress(model: nn.Module, recipe: RecipeLike, train_loader,
             eval_fn: Optional[Callable[[nn.Module], float]] = None,
             teacher: Optional[nn.Module] = None, progress: bool = True,
             log: Callable[[str], None] = print) -> Tuple[nn.Module, Dict[str, Any]]:
    """Compress `model` in place following `recipe` (a path to a TOML file or a dict with the
    same sections). `train_loader` yields (inputs, labels) batches: a re-iterable (DataLoader,
    list) or a callable returning a fresh iterable per epoch. `eval_fn(model) -> top-1 in
    [0, 1]` is called before, after each fine-tune epoch, and at the end. The distillation
    teacher defaults to a frozen copy of `model` as given. Returns (model, report)."""
    import scalenn
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: expected an nn.Module, got {type(model).__name__}")
    recipe = load_recipe(recipe) if isinstance(recipe, str) else parse_recipe(recipe)
    torch.manual_seed(recipe["recipe"]["seed"])
    ft, prune_cfg = recipe["finetune"], recipe.get("prune")
    steps = []
    report: Dict[str, Any] = {"recipe": recipe, "steps": steps, "history": []}

    def record(step: str, status: str, detail: str = "", **extra):
        steps.append({"step": step, "status": status, "detail": detail, **extra})
        log(f"[{step}] {status}" + (f": {detail}" if detail else ""))

    if eval_fn is not None:
        report["top1_before"] = float(eval_fn(model))
        log(f"[evaluate] before compression: top-1 {100 * report['top1_before']:.2f}%")

    if "distill" in recipe and teacher is None:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    # 1. prune
    prune_active, schedule = False, None
    prune_filter = layer_filter(prune_cfg["layers"], prune_cfg["skip"]) if prune_cfg else None
    max_steps = ft["max_steps_per_epoch"] or None
    if prune_cfg is not None:
        if prune_cfg["schedule"] == "oneshot":
            res = scalenn.prune(model, prune_cfg["sparsity"], pattern=prune_cfg["pattern"],
                                scope=prune_cfg["scope"], filter=prune_filter)
            prune_active = True
            record("prune", "done", f"one-shot to {prune_cfg['sparsity']:.0%} "
                   f"({prune_cfg['pattern']}, {prune_cfg['scope']}); measured Linear sparsity "
                   f"{linear_sparsity(model):.1%}", result=str(res))
        else:
            total = ft["epochs"] * _steps_per_epoch(train_loader, ft["max_steps_per_epoch"])
            schedule = _pruning_schedule(model, prune_cfg, total, prune_filter)
            prune_active = True
            record("prune", "scheduled", f"gradual {prune_cfg['initial_sparsity']:.0%} -> "
                   f"{prune_cfg['sparsity']:.0%} ({prune_cfg['pattern']}) over optimizer steps "
                   f"{int(prune_cfg['start'] * total)}..{max(1, int(prune_cfg['end'] * total))} "
                   f"of {total}, every {prune_cfg['frequency']}")

    # 2. fine-tune (with distillation)
    if ft["epochs"] == 0:
        record("finetune", "skipped", "[finetune] epochs = 0")
    else:
        loss_fn = training.cross_entropy
        what = "cross entropy"
        if "distill" in recipe:
            d = recipe["distill"]
            loss_fn = DistillationLoss(teacher, temperature=d["temperature"], alpha=d["alpha"],
                                       features=d["features"] or None,
                                       feature_weight=d["feature_weight"])
            if d["features"]:
                loss_fn.attach(model)
            what = f"distillation T={d['temperature']} alpha={d['alpha']}"
        optimizer = _optimizer(model, ft)
        history = report["history"]

        def on_epoch(epoch):
            row = history_rows[-1] if history_rows else None
            sparsity = linear_sparsity(model)
            top1 = float(eval_fn(model)) if eval_fn is not None else None
            history.append({"epoch": epoch, "linear_sparsity": sparsity, "test_top1": top1})
            log(f"  epoch {epoch}: Linear sparsity {sparsity:.1%}" +
                (f", test top-1 {100 * top1:.2f}%" if top1 is not None else "") +
                (f", train loss {row['loss']:.3f}" if row else ""))

        history_rows = []
        t0 = time.perf_counter()
        for epoch in range(ft["epochs"]):
            loss, top1 = training.train_epoch(
                model, train_loader, optimizer, loss_fn,
                desc=f"fine-tune epoch {epoch + 1}/{ft['epochs']}",
                on_step=schedule.step if schedule is not None else None,
                max_steps=max_steps, progress=progress)
            history_rows.append({"loss": loss, "train_top1": top1})
            on_epoch(epoch + 1)
        if isinstance(loss_fn, DistillationLoss):
            loss_fn.remove_hooks()
        record("finetune", "done", f"{ft['epochs']} epoch(s), {what}, "
               f"{time.perf_counter() - t0:.0f} s")

    report["nonzero_params"] = effective_nonzero(model)
    report["linear_sparsity"] = linear_sparsity(model)

    # 3. pack the pruned layers
    if prune_active:
        if prune_cfg["pack"]:
            model, res = scalenn.sparsify(model, filter=prune_filter, force=prune_cfg["force"])
            record("sparsify", "done", sparsify_summary(res),
                   result=str(res), layers=res.to_dict()["layers"])
        else:
            scalenn.remove_masks(model)
            record("sparsify", "done", "pack = false: masks baked into dense weights")

    # 4. quantize
    if "quantize" in recipe:
        q = recipe["quantize"]
        model, res = scalenn.quantize(model, scheme=q["scheme"], filter=q["layers"] or None,
                                      skip=tuple(q["skip"]), force=q["force"])
        record("quantize", "done", quantize_summary(res), result=str(res))

    if eval_fn is not None:
        report["top1_after"] = float(eval_fn(model))
        log(f"[evaluate] after compression: top-1 {100 * report['top1_after']:.2f}%")
    return model, report


def sparsify_summary(res) -> str:
    """One line: which Linear layers sparsify packed and which it kept dense, and why."""
    packed = [f"{e.name} {e.layout} density {e.density:.3f} ({e.reason}; {_speedups(e)})"
              for e in res.layers if e.choice == "sparse"]
    dense = [f"{e.name} ({e.reason}; {_speedups(e)})" if e.speedup else f"{e.name} ({e.reason})"
             for e in res.layers if e.choice != "sparse"]
    return ("SparseLinear: " + (", ".join(packed) or "none") +
            "; kept dense: " + (", ".join(dense) or "none"))


def _speedups(e) -> str:
    return "sparse/dense speed " + " ".join(f"M={m}:{r:.2f}x" for m, r in e.speedup.items())


def quantize_summary(res) -> str:
    """One line: which layers became Int8Linear / SparseInt8Linear and which were kept, and why."""
    def names(action):
        return ", ".join(e["name"] for e in res.entries if e["action"] == action) or "none"
    kept = [f"{e['name']} ({e['reason']})" for e in res.entries if e["name"] not in res.swapped]
    return (f"{res.scheme}: Int8Linear: {names('int8')}; SparseInt8Linear: "
            f"{names('sparse_int8')}; kept: " + (", ".join(kept) or "none"))


class _CallablePackage(types.ModuleType):
    """Module type of scalenn.compress: a package that can be called like compress()."""

    def __call__(self, *args, **kwargs):
        return compress(*args, **kwargs)


def make_package_callable() -> None:
    """Lets `scalenn.compress(model, recipe, ...)` work while scalenn.compress remains the
    package holding prune/quantize/distill/... (assigning a ModuleType subclass to a module's
    __class__ is supported by Python for exactly this)."""
    package = sys.modules[__name__.rpartition(".")[0]]
    if not isinstance(package, _CallablePackage):
        package.__class__ = _CallablePackage
