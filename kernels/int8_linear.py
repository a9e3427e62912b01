"""W8A8 linear in Triton: y = act((round(x / s_x) @ W_q^T) * s_x * s_w[n] + bias).

Contract (same as the CPU kernels and `scalenn::int8_linear`):
- x [..., K] float32/float16/bfloat16 is quantized per token (row) exactly like
  `scalenn::quantize_per_row`: scale = amax/127 (IEEE division), q = round_half_even(x * 127/amax)
  clamped to [-127, 127]; a zero row gives q = 0; a row holding NaN/Inf gives q = 0 and
  scale NaN, so its output row is NaN (and no other row is touched).
- W_q [N, K] int8 row-major (the CUDA "packed" layout is the plain int8 weight), w_scale [N] f32.
- int32 accumulation (exact), then the epilogue in float32: acc * s_x[m] * s_w[n] + bias[n],
  activation "none" | "relu" | "gelu" (exact erf form, as torch.nn.functional.gelu), cast to
  x.dtype.

Two ways to quantize the activations:
- pre-pass (the default): one small kernel writes q int8 + row scales (kernels/quantize.py),
  then the GEMM reads int8 activations: half the activation bytes of bf16 for every N-tile.
- fused (fuse_quant=True): every program computes the row scales of its BLOCK_M rows in a first
  pass over K and quantizes the x tiles in registers on the fly: one launch, x stays float.
  Measured on an H200 (CUDA-graph device time, K=N=4096/8192) it is 2.1x slower at M=16 and
  3.6-4x slower at M=128 than pre-pass + GEMM: the amax pass and the float x tiles cost more
  than the second launch. Kept as an option because it needs no int8 scratch buffer.
"""
import torch
import triton
import triton.language as tl

from . import interpreting
from ._config import gemm_configs, m_bucket, prune_by_m, with_pre_hook
from .quantize import _FLT_MAX, _ROUND_MAGIC, quantize_per_row

ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2}
_GROUP_M = 8
_INV_SQRT2 = tl.constexpr(0.7071067811865476)


@triton.jit
def _epilogue(acc, row_scale, w_scale_ptr, bias_ptr, offs_n, N, HAS_BIAS: tl.constexpr,
              ACT: tl.constexpr):
    ws = tl.load(w_scale_ptr + offs_n, mask=offs_n < N, other=0.0)
    y = acc.to(tl.float32) * row_scale[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        # where(y < 0, 0, y) rather than maximum(): a NaN row must stay NaN, as torch.relu.
        y = tl.where(y < 0.0, 0.0, y)
    elif ACT == 2:
        y = 0.5 * y * (1.0 + tl.math.erf(y * _INV_SQRT2))
    return y


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program in grouped order: GROUP_M row-tiles share each weight
    column-tile while it sits in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * num_n) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    return pid_m, pid_n


@triton.jit
def _row_quant_params(x_ptr, offs_m, M, K, stride_xm, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """Per-row (scale, 1/scale-multiplier, finite) for BLOCK_M rows: the quantize contract."""
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    bad = tl.zeros([BLOCK_M], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        a = tl.abs(tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask,
                           other=0.0).to(tl.float32))
        bad = tl.maximum(bad, tl.max(tl.where(a <= _FLT_MAX, 0, 1), axis=1))
        amax = tl.maximum(amax, tl.max(tl.where(a <= _FLT_MAX, a, 0.0), axis=1))
    finite = bad == 0
    scale = tl.where(finite, tl.math.div_rn(amax, 127.0), float("nan"))
    safe = tl.where(amax > 0.0, amax, 1.0)
    inv = tl.where(finite & (amax > 0.0), tl.math.div_rn(127.0, safe), 0.0)
    return scale, inv, finite


@triton.autotune(configs=gemm_configs("int8"), key=["M_BUCKET", "N", "K", "FUSE_QUANT"],
                 prune_configs_by={"early_config_prune": prune_by_m})
@triton.jit
def _int8_linear_kernel(x_ptr, q_ptr, row_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, y_ptr,
                        M, N, K, stride_xm, stride_ym, M_BUCKET,
                        FUSE_QUANT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                        RAW_INT32: tl.constexpr, GROUP_M: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    if FUSE_QUANT:
        row_scale, inv, finite = _row_quant_params(x_ptr, offs_m, M, K, stride_xm, BLOCK_M,
                                                   BLOCK_K)
    else:
        row_scale = tl.load(row_scale_ptr + offs_m, mask=offs_m < M, other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        if FUSE_QUANT:
            xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=a_mask,
                         other=0.0).to(tl.float32)
            # (v + 1.5*2^23) - 1.5*2^23 rounds half to even; fp fusion is off for this kernel
            # so the multiply is rounded on its own first, exactly as the reference does.
            r = (xv * inv[:, None] + _ROUND_MAGIC) - _ROUND_MAGIC
            r = tl.minimum(tl.maximum(r, -127.0), 127.0)
            a = tl.where(finite[:, None], r, 0.0).to(tl.int8)
        else:
            a = tl.load(q_ptr + offs_m[:, None] * K + offs_k[None, :], mask=a_mask, other=0)
        # W is [N, K] row-major: the [BLOCK_K, BLOCK_N] tile is K-major, as the MMA wants it.
        b = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None],
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0)
        acc = tl.dot(a, b, acc=acc, out_dtype=tl.int32)

    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if RAW_INT32:
        tl.store(y_ptrs, acc, mask=out_mask)
    else:
        y = _epilogue(acc, row_scale, w_scale_ptr, bias_ptr, offs_n, N, HAS_BIAS, ACT)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=out_mask)


def _tma_block_shapes(nargs):
    """Autotune pre-hook: the descriptors' block shapes follow the chosen tile."""
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


@triton.autotune(configs=with_pre_hook(gemm_configs("int8"), _tma_block_shapes),
                 key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": prune_by_m})
@triton.jit
def _int8_linear_tma_kernel(a_desc, w_desc, row_scale_ptr, w_scale_ptr, bias_ptr, y_ptr,
                            M, N, K, stride_ym, M_BUCKET,
                            HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GROUP_M: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The pre-pass GEMM with both int8 operands brought in by the tensor-memory accelerator
    (Hopper): host-built descriptors, tiles zero-filled past the edges, no address arithmetic
    or masks in the K loop."""
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = a_desc.load([off_m, k0])
        w = w_desc.load([off_n, k0])
        acc = tl.dot(a, w.T, acc=acc, out_dtype=tl.int32)
    offs_m = (off_m + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (off_n + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_scale = tl.load(row_scale_ptr + offs_m, mask=offs_m < M, other=0.0)
    y = _epilogue(acc, row_scale, w_scale_ptr, bias_ptr, offs_n, N, HAS_BIAS, ACT)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _launch_opts():
    # No fp contraction: x*inv + magic must not become an fma (it would round differently from
    # the reference's rounded product). The interpreter has no such option (and no fma).
    return {} if interpreting() else {"enable_fp_fusion": False}


def _grid(M, N):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


def int8_pack_weight(w_int8: torch.Tensor) -> torch.Tensor:
    """CUDA/Triton weight layout: the int8 weight [N, K] itself, row-major (a fresh tensor)."""
    if w_int8.dtype != torch.int8:
        raise TypeError(f"int8_pack_weight: w_int8 must be int8, got {w_int8.dtype}")
    if w_int8.dim() != 2:
        raise ValueError(f"int8_pack_weight: w_int8 must be 2-D [N, K], got shape "
                         f"{tuple(w_int8.shape)}")
    return w_int8.clone(memory_format=torch.contiguous_format)


def _check_linear_args(x, w_packed, w_scale, bias, out_features, activation):
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"int8_linear: x must be float32, float16 or bfloat16, got {x.dtype}")
    if w_packed.dtype != torch.int8 or w_scale.dtype != torch.float32:
        raise TypeError(f"int8_linear: expected int8 w_packed and float32 w_scale, got "
                        f"{w_packed.dtype} and {w_scale.dtype}")
    if x.dim() < 1 or w_packed.dim() != 2 or w_packed.shape[0] != out_features:
        raise ValueError(f"int8_linear: expected x [..., K] and w_packed [out_features="
                         f"{out_features}, K], got {tuple(x.shape)} and {tuple(w_packed.shape)}")
    if w_packed.shape[1] != x.shape[-1]:
        raise ValueError(f"int8_linear: x has K={x.shape[-1]} but w_packed has "
                         f"K={w_packed.shape[1]}")
    if w_scale.shape != (out_features,):
        raise ValueError(f"int8_linear: w_scale must be [{out_features}], got "
                         f"{tuple(w_scale.shape)}")
    if bias is not None and (bias.shape != (out_features,) or not bias.is_floating_point()):
        raise ValueError(f"int8_linear: bias must be a float tensor [{out_features}], got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"int8_linear: activation must be one of {sorted(ACTIVATIONS)}, got "
                         f"{activation!r}")
    devices = {t.device for t in (x, w_packed, w_scale) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"int8_linear: all tensors must be on one device, got {devices}")


def int8_linear(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                bias, out_features: int, activation: str, *, fuse_quant=False,
                tma=None) -> torch.Tensor:
    """scalenn::int8_linear on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).

    fuse_quant: quantize the activations inside the GEMM instead of in a pre-pass (see the
    module docstring). tma: the pre-pass GEMM through TMA descriptors; None = from
    M >= TMA_MIN_M where the GPU has TMA (Hopper+) and the rows are 16-byte aligned, True
    forces it (tests, also under the interpreter), False never (benchmarks compare both)."""
    _check_linear_args(x, w_packed, w_scale, bias, out_features, activation)
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M, N = x2.shape[0], out_features
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M > 0 and N > 0:
        _launch(x2, w_packed.contiguous(), w_scale.contiguous(),
                None if bias is None else bias.contiguous(), y, ACTIVATIONS[activation],
                raw_int32=False, fuse_quant=fuse_quant, tma=tma)
    return y.reshape(*x.shape[:-1], N)


def int8_mm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a [M, K] int8 @ w [N, K]^T int8 -> int32 [M, N], exact (the same GEMM kernel, no
    epilogue): what tests use to check the int32 accumulation bit for bit."""
    if a.dtype != torch.int8 or w.dtype != torch.int8 or a.dim() != 2 or w.dim() != 2:
        raise TypeError(f"int8_mm: expected 2-D int8 operands, got {a.dtype} {tuple(a.shape)} "
                        f"and {w.dtype} {tuple(w.shape)}")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"int8_mm: K mismatch {a.shape[1]} vs {w.shape[1]}")
    M, N = a.shape[0], w.shape[0]
    y = torch.empty((M, N), dtype=torch.int32, device=a.device)
    if M > 0 and N > 0:
        ones = torch.ones(M, dtype=torch.float32, device=a.device)
        _int8_linear_kernel[_grid(M, N)](
            a, a.contiguous(), ones, w.contiguous(), ones, ones, y, M, N, a.shape[1], a.shape[1],
            N, m_bucket(M), FUSE_QUANT=False, HAS_BIAS=False, ACT=0, RAW_INT32=True,
            GROUP_M=_GROUP_M, **_launch_opts())
    return y


# Up to this M the pointer GEMM is used even where TMA is available: on an H200 the TMA kernel
# was 6-12% faster from M=1024 up, but 7-12% slower at M=16..128 (K=N=4096), and building the
# descriptors adds ~90 us of Python to each eager call.
TMA_MIN_M = 257


def _tma_usable(q, w):
    """TMA needs Hopper or newer, 16-byte aligned bases and row strides (K % 16 == 0)."""
    M, K = q.shape
    if M < TMA_MIN_M or K % 16 or q.data_ptr() % 16 or w.data_ptr() % 16:
        return False
    return (not interpreting() and q.is_cuda and
            torch.cuda.get_device_capability(q.device)[0] >= 9)


def _launch_tma(q, row_scale, w, w_scale, bias, y, act):
    from triton.tools.tensor_descriptor import TensorDescriptor
    M, K = q.shape
    N = w.shape[0]
    # Block shapes are placeholders: the autotune pre-hook sets them from the chosen tile.
    a_desc = TensorDescriptor.from_tensor(q, [16, 32])
    w_desc = TensorDescriptor.from_tensor(w, [16, 32])
    _int8_linear_tma_kernel[_grid(M, N)](
        a_desc, w_desc, row_scale, w_scale, w_scale if bias is None else bias, y, M, N, K,
        y.stride(0), m_bucket(M), HAS_BIAS=bias is not None, ACT=act, GROUP_M=_GROUP_M,
        **_launch_opts())


def _launch(x2, w, w_scale, bias, y, act, raw_int32, fuse_quant, tma=None):
    M, K = x2.shape
    N = w.shape[0]
    if fuse_quant:
        q, row_scale = x2, w_scale  # unused placeholders (FUSE_QUANT reads x directly)
    else:
        q, row_scale = quantize_per_row(x2.contiguous())
        use_tma = _tma_usable(q, w) if tma is None else bool(tma)
        if use_tma and not raw_int32:
            if K % 16:
                raise ValueError(f"int8_linear: the TMA path needs K % 16 == 0, got K={K}")
            return _launch_tma(q, row_scale, w, w_scale, bias, y, act)
    _int8_linear_kernel[_grid(M, N)](
        x2, q, row_scale, w, w_scale, w_scale if bias is None else bias, y,
        M, N, K, x2.stride(0), y.stride(0), m_bucket(M),
        FUSE_QUANT=bool(fuse_quant), HAS_BIAS=bias is not None, ACT=act, RAW_INT32=raw_int32,
        GROUP_M=_GROUP_M, **_launch_opts())
