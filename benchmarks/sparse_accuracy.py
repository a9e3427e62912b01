"""Fashion-MNIST accuracy of pruned models: dense vs gradual pruning to 90% unstructured and
to 2:4, with fine-tuning, for the 784-128-64-10 MLP and a small CNN.

Protocol (per model):
  1. train dense for E_dense epochs (Adam, batch 256);
  2. dense baseline: continue training the dense model for E_prune + E_ft more epochs (same
     total training as the pruned models);
  3. for each pattern, from the dense model of step 1: PruningSchedule (Zhu & Gupta cubic) from
     0 to the final sparsity over E_prune epochs, then E_ft epochs of fine-tuning at the final
     sparsity (masks fixed); then scalenn.sparsify(force=True) turns every pruned Linear into a
     SparseLinear and the test set is evaluated again through the sparse kernels;
  4. sparse + int8: a copy of the same fine-tuned, still masked model goes through
     scalenn.quantize(force=True), which turns every pruned Linear into a SparseInt8Linear (kept
     weights int8 per output channel, activations int8 per token), and is evaluated as well: the
     accuracy cost of int8 on top of the pruning, without any further training.

Run:  python benchmarks/sparse_accuracy.py [--quick]   (writes benchmarks/results/)
"""
import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's scalenn, not another install

import scalenn  # noqa: E402
from scalenn.data import load_fashion_mnist  # noqa: E402


def make_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Linear(64, 10))


def make_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


# Which layers each pattern prunes: all Linear layers, and the CNN's second conv (the first
# conv has 9 inputs per output, too few for 2:4, and 144 weights: nothing to gain).
PRUNE_FILTER = {"mlp": None, "cnn": [r"^3$", r"^7$", r"^9$"]}
PATTERNS = [("unstructured", 0.9, "global"), ("2:4", 0.5, "layer")]


def evaluate(model, x, y, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train()
    return 100.0 * correct / max(1, len(x))


def train(model, x, y, epochs, lr, batch, gen, schedule=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
    return model


def run(quick=False, seed=0, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    if quick:
        xtr, ytr, xte, yte = xtr[:8000], ytr[:8000], xte[:2000], yte[:2000]
    cfg = {"mlp": dict(dense=1 if quick else 4, prune=1 if quick else 3, ft=1 if quick else 2,
                       lr=2e-3),
           "cnn": dict(dense=1 if quick else 3, prune=1 if quick else 2, ft=1 if quick else 1,
                       lr=2e-3)}
    models = ["mlp"] if quick else ["mlp", "cnn"]
    batch = 256
    steps_per_epoch = len(xtr) // batch
    rows = []
    for name in models:
        c = cfg[name]
        t0 = time.time()
        base = train((make_mlp if name == "mlp" else make_cnn)(), xtr, ytr, c["dense"], c["lr"],
                     batch, gen)
        dense = train(copy.deepcopy(base), xtr, ytr, c["prune"] + c["ft"], c["lr"] / 2, batch, gen)
        acc_dense = evaluate(dense, xte, yte)
        rows.append({"model": name, "variant": "dense", "sparsity": 0.0, "test_acc": acc_dense,
                     "sparse_kernel_acc": None, "sparse_int8_acc": None, "delta_vs_dense": 0.0,
                     "epochs": c["dense"] + c["prune"] + c["ft"], "seconds": time.time() - t0})
        log(f"{name} dense: {acc_dense:.2f}%")
        for pattern, final, scope in PATTERNS:
            t1 = time.time()
            model = copy.deepcopy(base)
            end = c["prune"] * steps_per_epoch - 1
            sched = scalenn.PruningSchedule(model, final, start_step=0, end_step=end,
                                            frequency=max(1, steps_per_epoch // 4),
                                            pattern=pattern, scope=scope,
                                            filter=PRUNE_FILTER[name])
            train(model, xtr, ytr, c["prune"], c["lr"] / 2, batch, gen, schedule=sched)
            train(model, xtr, ytr, c["ft"], c["lr"] / 4, batch, gen)  # masks fixed
            report = sched.last_report
            acc = evaluate(model, xte, yte)
            # int8 on top of the pruning: quantize needs the masks (a masked Linear is what it
            # recognizes as pruned), so it runs on a copy taken before remove_masks below. It
            # creates nn.Linear layers, which draw from the global RNG: fork_rng keeps the RNG
            # stream (the next model's initialization) as it was without this column.
            with torch.random.fork_rng(devices=[]):
                q_model, _ = scalenn.quantize(copy.deepcopy(model), force=True)
            acc_int8 = evaluate(q_model, xte, yte)
            n_int8 = sum(isinstance(m, scalenn.nn.SparseInt8Linear) for m in q_model.modules())
            del q_model
            scalenn.remove_masks(model)
            model, sp_report = scalenn.sparsify(model, force=True, batch_sizes=(1,))
            acc_sparse = evaluate(model, xte, yte)
            n_sparse = sum(isinstance(m, scalenn.nn.SparseLinear) for m in model.modules())
            rows.append({"model": name, "variant": f"{pattern} ({scope})",
                         "sparsity": round(report.sparsity, 4), "test_acc": acc,
                         "sparse_kernel_acc": acc_sparse, "sparse_int8_acc": acc_int8,
                         "delta_vs_dense": acc - acc_dense,
                         "int8_delta_vs_dense": acc_int8 - acc_dense,
                         "epochs": c["dense"] + c["prune"] + c["ft"],
                         "sparse_layers": n_sparse, "sparse_int8_layers": n_int8,
                         "seconds": time.time() - t1})
            log(f"{name} {pattern}: sparsity {report.sparsity:.3f} acc {acc:.2f}% "
                f"(sparse kernels {acc_sparse:.2f}%, {n_sparse} SparseLinear; sparse + int8 "
                f"{acc_int8:.2f}%, {n_int8} SparseInt8Linear)")
    return rows


def to_markdown(rows, meta):
    lines = ["# Fashion-MNIST: pruned vs dense", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", "| model | variant | sparsity of pruned layers | test acc % | acc through SparseLinear % "
              "| sparse + int8 acc % (SparseInt8Linear) | delta vs dense (points) "
              "| sparse + int8 delta vs dense | epochs | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sk = "" if r["sparse_kernel_acc"] is None else f"{r['sparse_kernel_acc']:.2f}"
        si8 = "" if r.get("sparse_int8_acc") is None else f"{r['sparse_int8_acc']:.2f}"
        di8 = "" if r.get("sparse_int8_acc") is None else f"{r['int8_delta_vs_dense']:+.2f}"
        lines.append(f"| {r['model']} | {r['variant']} | {r['sparsity']:.3f} | {r['test_acc']:.2f} "
                     f"| {sk} | {si8} | {r['delta_vs_dense']:+.2f} | {di8} | {r['epochs']} "
                     f"| {r['seconds']:.0f} |")
    lines += ["", "- targets: 90% unstructured within 1 point of dense, 2:4 within 0.5 point",
              "- pruned layers: MLP all three Linear; CNN conv2 + both Linear (conv1 dense)",
              "- sparse + int8: the fine-tuned pruned model through scalenn.quantize(force=True) "
              "(pruned Linear -> SparseInt8Linear: int8 kept weights per output channel, int8 "
              "activations per token; CNN convs stay float); no training after quantization",
              "- dense baseline trained for the same total number of epochs"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    # 1 thread by default: on a shared 2-core machine two-thread OpenMP barriers in small
    # training steps were 4x slower than one thread (measured); accuracy does not depend on it.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = run(quick=args.quick)
    meta = {"command": "python benchmarks/sparse_accuracy.py" + (" --quick" if args.quick else ""),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": args.threads, "total_seconds": round(time.time() - t0)}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "sparse_accuracy" + ("_quick" if args.quick else ""))
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = to_markdown(rows, meta)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
