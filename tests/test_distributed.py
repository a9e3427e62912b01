"""scalenn.distributed with 2 real gloo processes on loopback (tests/_dist_worker.py holds the
per-rank code and its checks against plain torch.distributed references). Every launch has a
hard timeout; the process group has its own (60 s) and FusedAllReduce a per-collective one."""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_dist_worker.py")
WORLD = 2
SHM = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
needs_shm = pytest.mark.skipif(not SHM, reason="no writable /dev/shm (same-host transport)")


def launch(scenario, tmp_path, timeout=150, expect_exit=None, kill_after_rank0=False,
           world=WORLD, rank_env=None):
    """Runs WORLD ranks of `scenario`; returns ({rank: result json or None}, {rank: output})."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    logs = [open(tmp_path / f"out{r}.txt", "w+") for r in range(world)]
    procs = [subprocess.Popen([sys.executable, WORKER, scenario, str(r), str(world), str(tmp_path)],
                              env=dict(env, **(rank_env or {}).get(r, {})), stdout=logs[r],
                              stderr=subprocess.STDOUT, cwd=ROOT)
             for r in range(world)]
    deadline = time.monotonic() + timeout
    try:
        for r, p in enumerate(procs):
            if kill_after_rank0 and r > 0:
                p.kill()  # a rank that stopped: the test ends it once rank 0 has reported
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scenario}: ranks did not finish within {timeout}s (hang)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results, outputs = {}, {}
    for r in range(world):
        logs[r].seek(0)
        outputs[r] = logs[r].read()
        logs[r].close()
        path = tmp_path / f"rank{r}.json"
        results[r] = json.loads(path.read_text()) if path.exists() else None
    return results, outputs


def assert_all_ok(results, outputs):
    for r, res in results.items():
        assert res is not None, f"rank {r} wrote no result; output:\n{outputs[r][-3000:]}"
        assert res["ok"], f"rank {r} failed:\n{res['error']}\noutput:\n{outputs[r][-2000:]}"


@pytest.mark.timeout(200)
def test_fused_allreduce_matches_mean_of_rank_gradients(tmp_path):
    """Uncompressed = mean to fp32 rounding, bf16/fp16 within their rounding, int8 relative
    error reported (< 5%), for many small + a few large parameters, a bf16 parameter, frozen and
    unused parameters, gradient accumulation with no_sync(), bucket views, the bucket rebuild;
    every rank bit-identical; NaN propagated and found; misuse errors."""
    results, outputs = launch("exact", tmp_path)
    assert_all_ok(results, outputs)
    report = results[0]["report"]
    print("int8 relative gradient error per step:", report["int8_rel_error_per_step"])
    print("bytes per step:", {k: v for k, v in report.items() if k.startswith("bytes_")})
    fp32 = report["bytes_None"]["sent_bytes_per_rank"]
    assert report["bytes_bf16"]["sent_bytes_per_rank"] < 0.55 * fp32
    assert report["bytes_int8"]["sent_bytes_per_rank"] < 0.3 * fp32


@needs_shm
@pytest.mark.timeout(200)
def test_shared_memory_transport_with_three_ranks(tmp_path):
    results, outputs = launch("shm_world3", tmp_path, world=3)
    assert_all_ok(results, outputs)


@needs_shm
@pytest.mark.timeout(200)
def test_two_machines_shared_memory_within_backend_between(tmp_path):
    """4 ranks pretending to be 2 machines of 2 (SCALENN_HOST_ID): "shm+backend"."""
    machine = {r: {"SCALENN_HOST_ID": f"machine-{r // 2}"} for r in range(4)}
    results, outputs = launch("two_machines", tmp_path, world=4, rank_env=machine)
    assert_all_ok(results, outputs)


@needs_shm
@pytest.mark.timeout(120)
def test_bucket_views_wait_until_every_rank_has_read_the_slot(tmp_path):
    results, outputs = launch("view_race", tmp_path, timeout=90)
    assert_all_ok(results, outputs)


@pytest.mark.timeout(200)
def test_ddp_comm_hook(tmp_path):
    results, outputs = launch("ddp_hook", tmp_path)
    assert_all_ok(results, outputs)
    print(results[0]["report"])


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_int8_error_feedback_training_matches_uncompressed(tmp_path):
    """200 steps on a fixed seed: bf16 and int8+EF final loss within 2% of uncompressed."""
    results, outputs = launch("train", tmp_path)
    assert_all_ok(results, outputs)
    print("final loss:", results[0]["report"]["final_loss"])
    print("wire memory, copies of the gradients:", results[0]["report"]["wire_memory_copies"])


@pytest.mark.timeout(120)
def test_mismatched_models_fail_at_construction(tmp_path):
    results, outputs = launch("mismatch", tmp_path, timeout=90)
    assert_all_ok(results, outputs)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["kill", pytest.param("kill_shm", marks=needs_shm)])
def test_killed_rank_makes_the_other_raise(tmp_path, scenario):
    results, outputs = launch(scenario, tmp_path, timeout=90)
    assert results[1] is None, "rank 1 was supposed to die"
    res = results[0]
    assert res is not None and res["ok"], (res or {}).get("error", outputs[0][-3000:])
    assert "peer rank may have died" in res["report"]["error"]
    assert res["report"]["seconds"] <= res["report"]["timeout"] + 5
    if scenario == "kill_shm":  # found through the dead process's lock, not the 20 s timeout
        assert "its process exited" in res["report"]["error"], res["report"]["error"]
        assert res["report"]["seconds"] < 5, res["report"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", [pytest.param("hang", marks=needs_shm), "hang_backend"])
def test_stopped_rank_makes_the_other_raise_after_timeout(tmp_path, scenario):
    results, outputs = launch(scenario, tmp_path, timeout=90, kill_after_rank0=True)
    res = results[0]
    assert res is not None and res["ok"], (res or {}).get("error", outputs[0][-3000:])
    assert "bucket 0 failed" in res["report"]["error"]
    assert res["report"]["timeout"] - 0.5 <= res["report"]["seconds"] <= res["report"]["timeout"] + 10


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("compression,transport", [
    ("int8", "backend"),  # int8 goes through gloo
    pytest.param("bf16", "shm", marks=needs_shm),  # the default on one machine
])
def test_example_runs_under_torchrun(tmp_path, compression, transport):
    """examples/train_ddp.py as a user runs it: torchrun --standalone --nproc_per_node=2."""
    from scalenn.data import fashion_mnist_available
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not next to this python")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "examples", "train_ddp.py"), "--limit", "4000",
                           "--compression", compression, "--timeout", "60"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"world 2, compression {compression}" in out and "test accuracy" in out
    assert f"bucket(s) over {transport}," in out, out[-2000:]
    assert out.count("test accuracy") == 1  # rank 0 only
    acc = float(out.split("test accuracy ")[1].split()[0])
    assert acc > 0.6, out[-2000:]
