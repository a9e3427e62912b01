"""Data-parallel training of a small CNN on Fashion-MNIST with scalenn's fused all-reduce.

Single node, 2 processes (CPU, gloo):
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --compression bf16

Several nodes (run on every node, same HOST:PORT = a reachable address of one of them):
    torchrun --nnodes 2 --nproc_per_node=8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        examples/train_ddp.py --compression int8

Without torchrun it trains in one process (world size 1). The progress bar and the report come
from rank 0 only.
"""
import argparse
import datetime
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import scalenn
from scalenn.data import batches, load_fashion_mnist
from scalenn.distributed import FusedAllReduce


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="per rank (default 64)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--compression", choices=["none", "bf16", "fp16", "int8"], default="none")
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--transport", choices=["auto", "shm", "backend"], default="auto",
                   help="auto: shared memory when all ranks share this machine (gloo), else the "
                        "process group's collectives")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per process (default: cores / local processes)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds before a stuck collective raises (a rank died or stopped)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def init_distributed(timeout_s: float):
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group(backend, timeout=timeout)
    else:
        store = os.path.join(tempfile.mkdtemp(), "store")
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1,
                                timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def main():
    args = parse_args()
    rank, world = init_distributed(args.timeout)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if torch.cuda.is_available() else torch.device("cpu")

    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]

    torch.manual_seed(args.seed)  # FusedAllReduce also copies rank 0's weights everywhere
    model = SmallCNN().to(device)
    compression = None if args.compression == "none" else args.compression
    sync = FusedAllReduce(model, bucket_mb=args.bucket_mb, compression=compression,
                          timeout=args.timeout, transport=args.transport)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    t0 = time.perf_counter()
    steps = skipped = 0
    for epoch in range(args.epochs):
        # Same permutation on every rank (same seed), each rank takes every world-th sample.
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(x_train.shape[0], generator=g)[rank::world]
        xs, ys = x_train[order], y_train[order]
        n_batches = -(-xs.shape[0] // args.batch_size)
        bar = tqdm(batches(xs, ys, args.batch_size, shuffle=False), total=n_batches,
                   disable=rank != 0, desc=f"epoch {epoch + 1}/{args.epochs}")
        for xb, yb in bar:
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            opt.zero_grad()
            loss.backward()
            sync.wait()
            if sync.found_inf:  # NaN/Inf gradient on some rank: every rank skips the step
                skipped += 1
                continue
            opt.step()
            steps += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.perf_counter() - t0

    # Test accuracy: each rank scores a shard, counts are summed.
    model.eval()
    with torch.no_grad():
        xt, yt = x_test[rank::world], y_test[rank::world]
        correct = sum(int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
                      for xb, yb in batches(xt, yt, 1000, shuffle=False))
    counts = torch.tensor([correct, xt.shape[0]], dtype=torch.float64)
    dist.all_reduce(counts)
    if rank == 0:
        b = sync.last_bytes
        print(f"world {world}, compression {args.compression}: {steps} steps ({skipped} skipped) "
              f"in {elapsed:.1f}s, test accuracy {counts[0] / counts[1]:.4f}")
        print(f"per step: {b['buckets']} bucket(s) over {sync.transport}, "
              f"{b['sent_bytes_per_rank'] / 1e6:.3f} MB sent per rank (fp32 gradients: "
              f"{b['fp32_gradient_bytes'] / 1e6:.3f} MB)")
    sync.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
