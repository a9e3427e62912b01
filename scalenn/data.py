"""Real data without downloads: Fashion-MNIST from the Debian package `dataset-fashion-mnist`
(IDX files under /usr/share/datasets/fashion-mnist), loaded into tensors."""
import gzip
import os
import struct
from typing import Tuple

import numpy as np
import torch

FASHION_MNIST_DIR = os.environ.get("SCALENN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
HOW_TO_GET = ("Fashion-MNIST ships in the Debian package dataset-fashion-mnist: "
              "sudo apt-get install dataset-fashion-mnist (or set SCALENN_FASHION_MNIST to a folder "
              "holding the four *-ubyte.gz files)")


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, "
                         f"found {body.size}")
    return body.reshape(dims)


def fashion_mnist_available(root: str = FASHION_MNIST_DIR) -> bool:
    return all(os.path.exists(os.path.join(root, f"{p}-{k}-idx{n}-ubyte.gz"))
               for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1)))


def load_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_DIR
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, 1, 28, 28] normalized to mean 0 / std 1, labels int64 [N])."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not fashion_mnist_available(root):
        raise FileNotFoundError(f"Fashion-MNIST not found in {root}. {HOW_TO_GET}")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - 0.2860) / 0.3530  # the training set's mean and std
    return x, torch.from_numpy(labels.astype(np.int64))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
            generator: torch.Generator = None):
    """Yields (x, y) mini-batches; a shuffled permutation per call when shuffle is set."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
