"""Construction-time agreement between ranks: same parameters (names, shapes, dtypes, frozen or
not) everywhere, and rank 0's initial values everywhere. A mismatch must be a clear error on
every rank, not a hang or silently mixed gradients later."""
import hashlib
from typing import List, Tuple

import torch
import torch.distributed as dist


def model_signature(model: torch.nn.Module) -> List[Tuple[str, tuple, str, bool]]:
    return [(name, tuple(p.shape), str(p.dtype).replace("torch.", ""), bool(p.requires_grad))
            for name, p in model.named_parameters()]


def _gather_bytes(data: bytes, group, world: int, device) -> List[bytes]:
    """all_gather of variable-length byte strings as uint8 tensors (no pickling). `device`:
    where the backend wants tensors (CPU for gloo, the GPU for NCCL)."""
    n = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    longest = max(int(s) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if data:
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    bufs = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(bufs, mine.to(device), group=group)
    return [bytes(b[:int(s)].cpu().tolist()) for b, s in zip(bufs, sizes)]


def _describe_difference(sig_a, sig_b, rank_a: int, rank_b: int) -> str:
    if len(sig_a) != len(sig_b):
        return (f"rank {rank_a} has {len(sig_a)} parameters, rank {rank_b} has {len(sig_b)}")
    for (na, sa, da, ga), (nb, sb, db, gb) in zip(sig_a, sig_b):
        if na != nb:
            return f"parameter names differ: {na!r} on rank {rank_a}, {nb!r} on rank {rank_b}"
        if sa != sb:
            return f"parameter {na!r} has shape {sa} on rank {rank_a} and {sb} on rank {rank_b}"
        if da != db:
            return f"parameter {na!r} has dtype {da} on rank {rank_a} and {db} on rank {rank_b}"
        if ga != gb:
            return (f"parameter {na!r} has requires_grad={ga} on rank {rank_a} and {gb} on "
                    f"rank {rank_b}")
    return "the parameter lists differ"


def check_same_model(model: torch.nn.Module, group, rank: int, world: int, device) -> None:
    """Raises ValueError on every rank when any rank's parameters differ from rank 0's."""
    sig = model_signature(model)
    text = "\n".join(f"{n}\t{s}\t{d}\t{g}" for n, s, d, g in sig).encode()
    digest = hashlib.sha256(text).digest()
    digests = _gather_bytes(digest, group, world, device)
    if all(d == digests[0] for d in digests):
        return
    texts = _gather_bytes(text, group, world, device)  # only on mismatch: who differs, and how

    def parse(t: bytes):
        out = []
        for line in t.decode().splitlines():
            n, s, d, g = line.split("\t")
            out.append((n, s, d, g == "True"))
        return out

    sigs = [parse(t) for t in texts]
    bad = [r for r in range(world) if digests[r] != digests[0]]
    detail = _describe_difference(sigs[0], sigs[bad[0]], 0, bad[0])
    raise ValueError(f"scalenn.distributed.FusedAllReduce: the model on rank(s) {bad} differs "
                     f"from rank 0's ({detail}); every rank must build the same model")
