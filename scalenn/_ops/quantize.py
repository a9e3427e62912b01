"""quantize_per_row / dequantize_per_row: plain-PyTorch references (the test oracle and the
fallback) and fake kernels for torch.compile / torch.export."""
import torch

QMAX = 127.0


def quantize_per_row_reference(x: torch.Tensor):
    """Symmetric per-row int8 quantization of a 2-D tensor, exactly as the kernels do it.

    scale = amax / 127 and q = round_half_even(x * (127 / amax)) in float32; a zero row gets
    scale 0 and q 0; a row holding NaN or Inf gets scale NaN and q 0.
    """
    xf = x.float()
    if xf.shape[1] == 0:
        amax = xf.new_zeros(xf.shape[0])
    else:
        amax = xf.abs().amax(dim=1)
    finite = torch.isfinite(amax)
    scale = torch.where(finite, amax / QMAX, torch.full_like(amax, float("nan")))
    safe = torch.where(finite & (amax > 0), amax, torch.ones_like(amax))
    # tensor / tensor is an IEEE division; `127 / tensor` would be reciprocal() * 127, which
    # rounds differently from the kernels' 127.0f / amax.
    inv = torch.where(finite & (amax > 0), torch.full_like(safe, QMAX) / safe,
                      torch.zeros_like(amax))
    q = torch.round(xf * inv[:, None]).clamp_(-QMAX, QMAX)
    q = torch.where(finite[:, None], q, torch.zeros_like(q))
    return q.to(torch.int8), scale


def dequantize_per_row_reference(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
    return (q.float() * scale[:, None]).to(dtype)


@torch.library.register_fake("scalenn::quantize_per_row")
def _quantize_per_row_fake(x):
    torch._check(x.dim() == 2, lambda: f"quantize_per_row: x must be 2-D, got {x.dim()}-D")
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(x.shape[0], dtype=torch.float32, device=x.device))


@torch.library.register_fake("scalenn::dequantize_per_row")
def _dequantize_per_row_fake(q, scale, dtype):
    return torch.empty(q.shape, dtype=dtype, device=q.device)
