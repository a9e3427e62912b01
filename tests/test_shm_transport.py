"""The same-host transport's pieces in one process: the progress-counter ops (semantics, bounds,
opcheck) and a shared region mapped twice (what two ranks see). The transport itself, with real
processes, is in test_distributed.py."""
import mmap
import multiprocessing
import os
import time

import pytest
import torch

from scalenn import ops
from scalenn.distributed import shm


def test_post_then_wait_sees_the_value():
    c = torch.zeros(24, dtype=torch.int64)
    ops.shm_post(c, 3, 7)
    assert int(c[3]) == 7 and int(c.sum()) == 7
    assert ops.shm_wait(c, 3, 8, 1, 7, 0.0) == -1      # reached
    assert ops.shm_wait(c, 3, 8, 1, 8, 0.0) == 0       # not yet: index 0 missing
    ops.shm_post(c, 11, 9)
    ops.shm_post(c, 19, 6)
    assert ops.shm_wait(c, 3, 8, 3, 6, 0.0) == -1
    assert ops.shm_wait(c, 3, 8, 3, 7, 0.0) == 2       # the third (index 19) lags
    assert ops.shm_wait(c, 0, 1, 0, 1, 0.0) == -1      # nothing to wait for


def test_wait_times_out_after_the_timeout():
    c = torch.zeros(8, dtype=torch.int64)
    t0 = time.monotonic()
    assert ops.shm_wait(c, 0, 1, 2, 1, 0.2) == 0
    assert 0.2 <= time.monotonic() - t0 < 2.0


def _post_later(path, nbytes):
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), nbytes)
    counters = torch.frombuffer(m, dtype=torch.int64, count=nbytes // 8)
    data = torch.frombuffer(m, dtype=torch.float32, count=nbytes // 4)
    time.sleep(0.2)
    data[100:200] = 3.5           # the payload first,
    ops.shm_post(counters, 1, 1)  # then the counter (release)


def test_a_second_process_sees_payload_once_the_counter_arrives(tmp_path):
    nbytes = 4096
    path = str(tmp_path / "region")
    with open(path, "wb") as f:
        f.truncate(nbytes)
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), nbytes)
    counters = torch.frombuffer(m, dtype=torch.int64, count=nbytes // 8)
    data = torch.frombuffer(m, dtype=torch.float32, count=nbytes // 4)
    proc = multiprocessing.get_context("spawn").Process(target=_post_later, args=(path, nbytes))
    proc.start()
    try:
        assert ops.shm_wait(counters, 1, 1, 1, 1, 60.0) == -1
        assert bool((data[100:200] == 3.5).all())
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == 0


def test_bad_arguments_are_refused():
    c = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="index 8 out of range for 8 counters"):
        ops.shm_post(c, 8, 1)
    with pytest.raises(ValueError, match="out of range"):
        ops.shm_post(c, -1, 1)
    with pytest.raises(ValueError, match="out of range"):
        ops.shm_wait(c, 2, 3, 3, 1, 0.0)  # 2 + 2 * 3 = 8
    with pytest.raises(TypeError, match="counters must be torch.int64, got torch.int32"):
        ops.shm_post(torch.zeros(8, dtype=torch.int32), 0, 1)
    with pytest.raises(ValueError, match="must be contiguous"):
        ops.shm_wait(torch.zeros(8, 2, dtype=torch.int64)[:, 0], 0, 1, 1, 0, 0.0)
    with pytest.raises(ValueError, match="must be 1-D"):
        ops.shm_wait(torch.zeros(4, 2, dtype=torch.int64), 0, 1, 1, 0, 0.0)
    with pytest.raises(ValueError, match="timeout_s must be >= 0"):
        ops.shm_wait(c, 0, 1, 1, 0, -1.0)


def test_opcheck():
    c = torch.zeros(16, dtype=torch.int64)
    torch.library.opcheck(torch.ops.scalenn.shm_post.default, (c, 5, 3))
    torch.library.opcheck(torch.ops.scalenn.shm_wait.default, (c, 1, 4, 3, 0, 0.0))


needs_shm = pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason="no /dev/shm")


@needs_shm
def test_region_file_is_reserved_mapped_and_shared(tmp_path):
    path = os.path.join(shm.SHM_DIR, f"scalenn-test-{os.getpid()}")
    assert shm.SharedRegion._create(path, 1 << 20)
    try:
        assert not shm.SharedRegion._create(path, 1 << 20)  # O_EXCL: never reuses a name
        a = shm.SharedRegion._map(path, 1 << 20, 0)
        b = shm.SharedRegion._map(path, 1 << 20, 1)
        assert shm.SharedRegion._map(path, 2 << 20, 2) is None  # smaller than asked: refused
        a.bytes[12345] = 77
        assert int(b.bytes[12345]) == 77
    finally:
        os.unlink(path)
    assert shm.SharedRegion._map(path, 1 << 20, 0) is None  # gone


def _hold_rank_1(path, ready, stop):
    region = shm.SharedRegion._map(path, 4096, 1)
    assert region is not None
    ready.set()
    stop.wait(60)


@needs_shm
def test_a_dead_rank_is_seen_through_its_lock():
    """Each rank locks its byte of the file; the kernel drops the lock with the process."""
    path = os.path.join(shm.SHM_DIR, f"scalenn-test-lock-{os.getpid()}")
    assert shm.SharedRegion._create(path, 4096)
    try:
        mine = shm.SharedRegion._map(path, 4096, 0)
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        peer = ctx.Process(target=_hold_rank_1, args=(path, ready, stop))
        peer.start()
        assert ready.wait(60)
        assert mine.alive(1)
        assert mine.alive(1)  # probing does not take the lock away
        peer.kill()
        peer.join(timeout=60)
        assert not mine.alive(1)
        assert not mine.alive(2)  # a rank that never mapped it
    finally:
        os.unlink(path)
