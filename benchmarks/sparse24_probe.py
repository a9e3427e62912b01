"""Where a 2:4 kernel reads its operands from: a layout map in four small calls, for the GPU check.

A wrong shared-memory swizzle, descriptor, register fragment or metadata layout makes a
tensor-core kernel fail its tests without saying why. These probes use fp16 inputs whose values
are their own coordinates (integers below 2048, exact in fp16 and in the fp32 accumulator), so
every output element tells which input element the kernel combined:

- x side: W keeps only its diagonal (w[n, n] = 1), N = K = 128. With x[t, k] = t the output
  y[t, n] is the token the kernel read for (t, n); with x[t, k] = k it is the k it used.
- w side: x is the identity (M = K = 128), W a random 2:4 pattern holding n + 1, then k + 1, at
  its kept positions, so y[t, n] is the row, then the column + 1, of the weight it used (0 where
  W has no kept value at (n, t)).

A correct kernel maps every element to itself; the report gives the fraction that do and the
first mismatches as (t, n) -> what was read.

gpu_check runs it as a separate process per kernel, before the tests, so that a kernel which
faults (a CUDA error poisons its process) is found without taking the tests and timings down:

    python benchmarks/sparse24_probe.py --kernel wgmma --out probe.json [--device cuda]
"""
import argparse
import json
import os
import sys

SIZE = 128  # tokens = features = K: one 128-token block and 4 k-steps of 32


def _call(torch, op, x, values, meta, dev):
    return op(x.to(dev), values.to(dev), meta.to(dev), None, None, SIZE, "none").float().cpu()


def _mismatches(torch, got, want, limit=8):
    bad = (got != want).nonzero().tolist()
    return [{"t": t, "n": n, "got": float(got[t, n]), "want": float(want[t, n])}
            for t, n in bad[:limit]]


def probe(torch, op, dev) -> dict:
    """Layout map of one scalenn::*_sp24_linear op (fp16 path) on device `dev`."""
    from scalenn._ops.sparse24_layout import pack_sparse24
    idx = torch.arange(SIZE)
    report = {}

    w_diag = torch.zeros(SIZE, SIZE, dtype=torch.float16)
    w_diag[idx, idx] = 1
    values, meta = pack_sparse24(w_diag)
    tokens = idx[:, None].expand(SIZE, SIZE).to(torch.float16)
    ks = idx[None, :].expand(SIZE, SIZE).to(torch.float16)
    for name, x, want in (("x_token", tokens, tokens.float()),
                          ("x_k", ks, ks.float())):
        got = _call(torch, op, x, values, meta, dev)
        report[name] = {"fraction_right": float((got == want).float().mean()),
                        "first_mismatches": _mismatches(torch, got, want)}

    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(SIZE, SIZE // 4, 4, generator=gen).argsort(-1)[..., :2]
    mask = torch.zeros(SIZE, SIZE // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
    mask = mask.reshape(SIZE, SIZE)
    eye = torch.eye(SIZE, dtype=torch.float16)
    for name, code in (("w_row", (idx[:, None] + 1).expand(SIZE, SIZE)),
                       ("w_col", (idx[None, :] + 1).expand(SIZE, SIZE))):
        w = torch.where(mask, code.float(), 0.0).to(torch.float16)
        values, meta = pack_sparse24(w)
        got = _call(torch, op, eye, values, meta, dev)
        want = w.float().t()  # y[t, n] = w[n, t]
        report[name] = {"fraction_right": float((got == want).float().mean()),
                        "first_mismatches": _mismatches(torch, got, want)}
    return report


def summary_line(name, report) -> str:
    parts = [f"{k} {100 * v['fraction_right']:.1f}%" for k, v in report.items()]
    return f"2:4 layout probe, {name}: " + ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", required=True, help="mma or wgmma (scalenn::<kernel>_sp24_linear)")
    ap.add_argument("--out", required=True, help="json file for the report")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch
    import scalenn  # noqa: F401  (registers the ops)
    op = getattr(torch.ops.scalenn, f"{args.kernel}_sp24_linear")
    report = probe(torch, op, args.device)
    report["line"] = summary_line(f"{args.kernel}.sp", report)
    if args.device == "cuda":
        torch.cuda.synchronize()  # a fault surfaces here at the latest, as a non-zero exit
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
