"""Assigning parameters to buckets: consecutive in the order gradients become ready, the first
bucket small (so the first collective starts early in the backward pass), the rest up to
bucket_bytes each."""
from typing import List, Sequence


def plan_buckets(order: Sequence[int], numels: Sequence[int], bucket_bytes: int,
                 first_bucket_bytes: int, bytes_per_elem: int = 4) -> List[List[int]]:
    """Split `order` (parameter indices) into buckets of at most the given byte sizes (a single
    parameter larger than the cap gets a bucket of its own)."""
    buckets: List[List[int]] = []
    current: List[int] = []
    size = 0
    cap = first_bucket_bytes
    for i in order:
        nbytes = numels[i] * bytes_per_elem
        if current and size + nbytes > cap:
            buckets.append(current)
            current, size, cap = [], 0, bucket_bytes
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets
