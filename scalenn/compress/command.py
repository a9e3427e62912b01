"""`scalenn compress --model pkg.module:factory --weights W --recipe R --data D --out DIR`.

Everything a user can get wrong is checked before any training starts, and reported as one line
on stderr with exit code 2: the recipe, the factory, the weights file, the data and its shape
against the model. The run writes into a hidden temporary folder next to --out and renames it
into place only when everything succeeded, so --out never holds half a result.

Output folder: model.safetensors (scalenn.save; reload with scalenn.load into a fresh model from
the same factory), recipe.toml (the recipe with every default written out, to rerun exactly),
report.md + report.png (accuracy, size, latency side by side with the dense model), report.json.
"""
import copy
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

from .. import data as data_mod
from .. import latency, report, training
from .measure import count_params, effective_nonzero, safetensors_bytes
from .recipe import RecipeError, load_recipe, to_toml


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


def build_model(spec: str) -> nn.Module:
    """`pkg.module:factory` -> factory() (a class or a function taking no required argument)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise UsageError(f"--model must look like pkg.module:factory (e.g. scalenn.models:mnist_cnn), "
                         f"got {spec!r}")
    module_name, attr = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the current folder import
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"--model {spec}: cannot import {module_name} ({type(exc).__name__}: "
                         f"{exc}); check the module path and that it imports from the current "
                         "folder or PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--model {spec}: {module_name} has no callable {attr!r}; name a function "
                         "or class that builds the model")
    try:
        model = factory()
    except Exception as exc:
        raise UsageError(f"--model {spec}: calling {attr}() failed ({type(exc).__name__}: {exc}); "
                         "the factory must build the model without arguments") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec}: {attr}() returned {type(model).__name__}, not an "
                         "nn.Module")
    return model


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """.safetensors (plain, or written by scalenn.save with compressed layers) or .pt/.pth (a
    state dict, loaded with weights_only=True)."""
    from ..serialize import FORMAT, load as scalenn_load
    if not os.path.isfile(path):
        raise UsageError(f"--weights {path}: file not found; pass the model's .safetensors or "
                         ".pt state dict")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") == FORMAT:
                return scalenn_load(model, path)
            state = load_file(path)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--weights {path}: not a readable safetensors file "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                             "is it truncated or another format?") from None
    elif path.endswith((".pt", ".pth", ".bin")):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--weights {path}: not a readable torch state dict ({first}); "
                             "save it with torch.save(model.state_dict(), path)") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UsageError(f"--weights {path}: expected a state dict of tensors, got "
                             f"{type(state).__name__}; save model.state_dict()")
    else:
        raise UsageError(f"--weights {path}: unknown extension; use .safetensors or .pt/.pth")
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if mismatched:
        raise UsageError(f"--weights {path}: tensor shapes differ from the model's (file vs model):"
                         f" {mismatched[:3]}; was it saved from the same architecture?")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(f"--weights {path} does not match the model: missing {list(missing)[:4]}, "
                         f"unexpected {list(unexpected)[:4]}; was it saved from the same "
                         "architecture as --model builds?")
    return model


def _load_dir(root: str) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    if data_mod.fashion_mnist_available(root):
        return data_mod.load_fashion_mnist("train", root), data_mod.load_fashion_mnist("test", root)
    files = [os.path.join(root, f"{s}.safetensors") for s in ("train", "test")]
    if all(os.path.isfile(f) for f in files):
        from safetensors.torch import load_file
        out = []
        for f in files:
            try:
                t = load_file(f)
            except Exception as exc:
                raise UsageError(f"--data {f}: not a readable safetensors file ({exc})") from None
            if set(t) != {"x", "y"}:
                raise UsageError(f"--data {f}: expected tensors 'x' (inputs) and 'y' (labels), "
                                 f"found {sorted(t)}")
            out.append((t["x"], t["y"]))
        return out[0], out[1]
    raise UsageError(f"--data {root}: expected the four Fashion-MNIST-style IDX files "
                     "(train/t10k-images-idx3-ubyte.gz, ...-labels-idx1-ubyte.gz) or "
                     "train.safetensors + test.safetensors with tensors x and y")


def load_data(spec: str):
    """'fashion-mnist' or a folder -> ((x_train, y_train), (x_test, y_test))."""
    try:
        if spec == "fashion-mnist":
            if not data_mod.fashion_mnist_available():
                raise UsageError(f"--data fashion-mnist: not installed. {data_mod.HOW_TO_GET}")
            train = data_mod.load_fashion_mnist("train")
            test = data_mod.load_fashion_mnist("test")
        elif os.path.isdir(spec):
            train, test = _load_dir(spec)
        else:
            raise UsageError(f"--data {spec}: not a folder; pass fashion-mnist or a folder of data")
    except (ValueError, FileNotFoundError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"--data {spec}: {exc}") from None
    for name, (x, y) in (("train", train), ("test", test)):
        if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32, torch.uint8) \
                or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise UsageError(f"--data {spec}: {name} split needs x [N, ...] and integer labels y "
                             f"[N] with N > 0, got x {tuple(x.shape)} and y {tuple(y.shape)} "
                             f"{y.dtype}")
    return ((train[0].float(), train[1].long()), (test[0].float(), test[1].long()))


def check_data_fits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str) -> None:
    """One forward on two samples: the model must accept the inputs and give [N, classes] logits
    that cover every label."""
    try:
        with torch.no_grad():
            out = model.eval()(x[:2])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--data {spec}: inputs of shape {tuple(x.shape[1:])} per sample do not "
                         f"fit the model ({type(exc).__name__}: {first}); give data shaped the "
                         "way the model's forward expects") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != min(2, x.shape[0]):
        raise UsageError(f"--data {spec}: the model must return logits [N, classes], it returned "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if int(y.max()) >= out.shape[1] or int(y.min()) < 0:
        raise UsageError(f"--data {spec}: labels span {int(y.min())}..{int(y.max())} but the model "
                         f"predicts {out.shape[1]} classes; relabel or replace the head")


def _prepare_out(out: str) -> str:
    """Refuse a non-empty --out; return the temporary folder (same filesystem) to write into."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {out} already exists and is not an empty folder; choose a new "
                         "folder or remove it")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UsageError(f"--out {out}: its parent folder {parent} does not exist")
    return tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)


def _finish_out(tmp: str, out: str) -> None:
    out = os.path.abspath(out)
    if os.path.isdir(out):
        os.rmdir(out)  # empty (checked in _prepare_out)
    os.rename(tmp, out)


def run(args) -> int:
    tmp = None
    try:
        recipe = load_recipe(args.recipe)
        model = build_model(args.model)
        load_weights(model, args.weights)
        (xtr, ytr), (xte, yte) = load_data(args.data)
        check_data_fits(model, xtr, ytr, args.data)
        check_data_fits(model, xte, yte, args.data)
        tmp = _prepare_out(args.out)
    except (RecipeError, UsageError) as exc:
        print(f"scalenn compress: error: {exc}", file=sys.stderr)
        return 2
    try:
        _compress_into(tmp, args, recipe, model, (xtr, ytr), (xte, yte))
        _finish_out(tmp, args.out)
    except (RecipeError, UsageError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"scalenn compress: error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {os.path.abspath(args.out)}: model.safetensors, recipe.toml, report.md, "
          "report.png, report.json")
    return 0


def _compress_into(tmp: str, args, recipe, model: nn.Module, train, test) -> None:
    import scalenn
    (xtr, ytr), (xte, yte) = train, test
    bs = recipe["finetune"]["batch_size"]
    loader = training.TensorBatches(xtr, ytr, bs, shuffle=True, seed=recipe["recipe"]["seed"])
    eval_fn: Callable[[nn.Module], float] = lambda m: training.evaluate(m, xte, yte)
    dense = copy.deepcopy(model).eval()
    params = count_params(dense)
    t0 = time.perf_counter()
    try:
        compressed, rep = scalenn.compress(model, recipe, loader, eval_fn,
                                           progress=not args.quiet)
    except ValueError as exc:  # e.g. a recipe option this build's pruning API lacks
        raise UsageError(str(exc)) from None
    elapsed = time.perf_counter() - t0
    scalenn.save(compressed, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "recipe.toml"), "w") as f:
        f.write(f"# recipe used by: scalenn compress --model {args.model} --recipe {args.recipe}\n")
        f.write(to_toml(recipe))
    rounds = 5 if args.quick_latency else 15
    lat = latency.measure({"dense": dense, "compressed": compressed.eval()},
                          lambda b: xte[torch.arange(b) % xte.shape[0]].clone(), rounds=rounds)
    rows = [
        {"variant": "dense (as loaded)", "top1": rep.get("top1_before"), "params": params,
         "nonzero": effective_nonzero(dense), "bytes": safetensors_bytes(dense),
         "latency": lat["dense"]},
        {"variant": "compressed", "top1": rep.get("top1_after"), "params": params,
         "nonzero": rep["nonzero_params"], "bytes": os.path.getsize(os.path.join(tmp, "model.safetensors")),
         "latency": lat["compressed"]},
    ]
    steps_md = "\n".join(f"- **{s['step']}**: {s['status']}" + (f" — {s['detail']}" if s['detail'] else "")
                         + (f"\n\n  ```\n  {str(s['result']).replace(chr(10), chr(10) + '  ')}\n  ```" if s.get("result") else "")
                         for s in rep["steps"])
    hist_md = "\n".join(f"- epoch {h['epoch']}: Linear sparsity {h['linear_sparsity']:.1%}"
                        + (f", test top-1 {100 * h['test_top1']:.2f}%" if h["test_top1"] is not None else "")
                        for h in rep["history"]) or "(no fine-tuning)"
    command = " ".join(["scalenn compress", "--model", args.model, "--weights", args.weights,
                        "--recipe", args.recipe, "--data", args.data, "--out", args.out])
    curve = [("fine-tune (per epoch)", [(h["linear_sparsity"], h["test_top1"]) for h in rep["history"]
                                        if h["test_top1"] is not None])]
    report.write(tmp, "report", f"scalenn compress: {recipe['recipe']['name']}", rows, curve,
                 sections=[("Steps", steps_md), ("Fine-tuning", hist_md),
                           ("Run", f"`{command}`\n\n{elapsed:.0f} s, torch {torch.__version__}, "
                                   f"{torch.get_num_threads()} threads")])
    print(report.format_table(rows))
    with open(os.path.join(tmp, "report.json"), "w") as f:
        json.dump({"command": command, "rows": rows, "steps": rep["steps"], "history": rep["history"],
                   "seconds": elapsed}, f, indent=1, default=str)


def add_parser(sub) -> None:
    p = sub.add_parser("compress", help="compress a saved model following a recipe (TOML)")
    p.add_argument("--model", required=True, help="pkg.module:factory that builds the model")
    p.add_argument("--weights", required=True, help="model weights: .safetensors or .pt/.pth")
    p.add_argument("--recipe", required=True, help="recipe file (TOML); see examples/")
    p.add_argument("--data", required=True,
                   help="fashion-mnist, or a folder with IDX files or train/test.safetensors (x, y)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--quick-latency", action="store_true", help="fewer latency rounds")
