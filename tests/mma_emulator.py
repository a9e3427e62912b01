"""A slow, literal CPU emulation of the CUDA tensor-core kernels' data movement, for tests.

It ports, line for line, the index arithmetic of csrc/cuda/int8_gemm_kernels.cu and
sparse24_kernels.cu (block/warp tiling, the cp.async slab loads with the 64-byte swizzle,
ldmatrix addressing, the epilogue's (feature, token) mapping) and executes it against a model of
the PTX instructions written from the PTX ISA fragment tables. So it checks the kernels' own
address math and the host packer together; it cannot check the PTX model itself (that is what
tests/test_cuda_kernels.py does on a GPU).
"""
import numpy as np

# ---- PTX model ---------------------------------------------------------------------------

def ldmatrix_x4(smem: np.ndarray, addresses):
    """addresses[l]: byte address lane l supplies (row l%8 of matrix l//8). Returns regs[32][4]
    as 4-byte arrays: lane l, register j = bytes 4*(l%4).. of row l//4 of matrix j."""
    regs = np.zeros((32, 4, 4), dtype=np.uint8)
    for l in range(32):
        for j in range(4):
            row_addr = addresses[8 * j + l // 4]
            regs[l, j] = smem[row_addr + 4 * (l % 4): row_addr + 4 * (l % 4) + 4]
    return regs


def mma_s8_m16n8k32(a_regs, b_regs):
    """a_regs [32][4][4 bytes], b_regs [32][2][4 bytes] -> D [32][4] int64 (one m16n8k32)."""
    A = np.zeros((16, 32), np.int64)
    B = np.zeros((32, 8), np.int64)
    for l in range(32):
        g, t = l // 4, l % 4
        for r in range(4):
            for b in range(4):
                A[g + 8 * (r % 2), 4 * t + b + 16 * (r // 2)] = np.int8(a_regs[l, r, b])
        for r in range(2):
            for b in range(4):
                B[4 * t + b + 16 * r, g] = np.int8(b_regs[l, r, b])
    return _distribute(A @ B)


def _distribute(C):
    out = np.zeros((32, 4), C.dtype)
    for l in range(32):
        g, t = l // 4, l % 4
        for v in range(4):
            out[l, v] = C[g + 8 * (v >= 2), 2 * t + (v & 1)]
    return out


def _meta_position(kind, convention, row, group):
    """(lane, nibble) holding the metadata of (row, group): the hardware assumption, written
    independently of scalenn/_ops/sparse24_layout.py."""
    if convention == "row_chunks":
        return 4 * (row % 8) + group // 4, 4 * (row // 8) + group % 4
    if convention == "row_halves":  # int8: lane (g, t) = row g + 8*(t%2), groups 8*(t//2)..+7
        return 4 * (row % 8) + 2 * (group // 8) + row // 8, group % 8
    # "owner" (int8): the lane whose A bytes hold the group; nibble = first byte index / 2
    t = (group % 8) // 2
    reg = (row // 8) + 2 * (group // 8)
    byte = 2 * (group % 2)
    return 4 * (row % 8) + t, (4 * reg + byte) // 2


def mma_sp(kind, convention, a_vals, meta, b_regs):
    """Sparse MMA. kind 'f16': a_vals [32][8] float, b_regs [32][4][2 halves] (k = 2t+h+8r);
    kind 'int8': a_vals [32][16] int, b_regs [32][4][4 bytes] (k = 4t+b+16r)."""
    logical = 32 if kind == "f16" else 64
    comp = np.zeros((16, logical // 2))
    for l in range(32):
        g, t = l // 4, l % 4
        for e in range(a_vals.shape[1]):
            if kind == "f16":
                r, h = e // 2, e % 2
                comp[g + 8 * (r % 2), 2 * t + h + 8 * (r // 2)] = a_vals[l, e]
            else:
                r, b = e // 4, e % 4
                comp[g + 8 * (r % 2), 4 * t + b + 16 * (r // 2)] = a_vals[l, e]
    A = np.zeros((16, logical))
    for row in range(16):
        for cc in range(logical // 2):
            group = cc // 2
            lane, nib = _meta_position(kind, convention, row, group)
            code = (int(meta[lane]) >> (4 * nib)) & 0xF
            idx = (code & 3) if cc % 2 == 0 else (code >> 2)
            A[row, 4 * group + idx] = comp[row, cc]
    B = np.zeros((logical, 8))
    for l in range(32):
        g, t = l // 4, l % 4
        for r in range(4):
            for e in range(b_regs.shape[2]):
                k = (2 * t + e + 8 * r) if kind == "f16" else (4 * t + e + 16 * r)
                B[k, g] = b_regs[l, r, e]
    return _distribute(A @ B)


# ---- ports of the kernels' index math ----------------------------------------------------

def swizzle64(row, chunk):
    return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4)


def load_slab(rows, g_bytes: np.ndarray, row0, R, row_bytes, b0):
    """g_bytes: [R, row_bytes] uint8 view of the global matrix."""
    smem = np.zeros(rows * 64, np.uint8)
    for i in range(rows * 4):
        r, c = i >> 2, i & 3
        row, byte = row0 + r, b0 + c * 16
        if row < R:  # bytewise, covering both the cp.async (aligned) and the fallback path
            chunk = g_bytes[row, byte: min(byte + 16, row_bytes)]
            smem[swizzle64(r, c): swizzle64(r, c) + len(chunk)] = chunk
    return smem


def int8_gemm(xq, w, WO, WT, MT, NT):
    """Port of int8_gemm_kernel: returns acc [M, N] (int64) as the epilogue would index it."""
    M, K = xq.shape
    N = w.shape[0]
    kOut, kTok = WO * MT * 16, WT * NT * 8
    xb, wb = xq.view(np.uint8), w.view(np.uint8)
    out = np.full((M, N), -(2 ** 62), np.int64)
    for bx in range(-(-N // kOut)):
        for by in range(-(-M // kTok)):
            out0, tok0 = bx * kOut, by * kTok
            acc = {}
            for slab in range(-(-K // 64)):
                sA = load_slab(kOut, wb, out0, N, K, slab * 64)
                sB = load_slab(kTok, xb, tok0, M, K, slab * 64)
                for warp in range(WO * WT):
                    wo, wt = warp % WO, warp // WO
                    b = {}
                    for nt in range(NT):
                        addrs = [swizzle64((wt * NT + nt) * 8 + (l & 7), l >> 3) for l in range(32)]
                        b[nt] = ldmatrix_x4(sB, addrs)
                    for kk in range(2):
                        for mt in range(MT):
                            addrs = [swizzle64((wo * MT + mt) * 16 + (l & 7) + ((l >> 3) & 1) * 8,
                                               kk * 2 + (l >> 4)) for l in range(32)]
                            a = ldmatrix_x4(sA, addrs)
                            for nt in range(NT):
                                d = mma_s8_m16n8k32(a, b[nt][:, 2 * kk: 2 * kk + 2])
                                key = (warp, mt, nt)
                                acc[key] = acc.get(key, 0) + d
            _epilogue(acc, out, out0, tok0, M, N, WO, MT, NT)
    return out


def _epilogue(acc, out, out0, tok0, M, N, WO, MT, NT):
    for (warp, mt, nt), d in acc.items():
        wo, wt = warp % WO, warp // WO
        for l in range(32):
            g, t = l // 4, l % 4
            for v in range(4):
                o = out0 + (wo * MT + mt) * 16 + g + (8 if v >= 2 else 0)
                tk = tok0 + (wt * NT + nt) * 8 + 2 * t + (v & 1)
                if o < N and tk < M:
                    out[tk, o] = d[l, v]


def sparse24(kind, convention, values, meta, x, N, WO, WT, MT, NT):
    """Port of sparse24_kernel. values [tiles, S, 32, per_lane], meta [tiles, S, 32] (numpy),
    x [M, K] (float16 or int8 numpy). Returns acc [M, N] float64."""
    M, K = x.shape
    esize = 1 if kind == "int8" else 2
    row_bytes = K * esize
    xb = x.view(np.uint8).reshape(M, row_bytes)
    tiles, steps = values.shape[0], values.shape[1]
    kOut, kTok = WO * MT * 16, WT * NT * 8
    out = np.full((M, N), np.nan)
    pad_meta = 0x44444444
    for bx in range(-(-N // kOut)):
        for by in range(-(-M // kTok)):
            out0, tok0 = bx * kOut, by * kTok
            acc = {}
            for step in range(steps):
                sB = load_slab(kTok, xb, tok0, M, row_bytes, step * 64)
                for warp in range(WO * WT):
                    wo, wt = warp % WO, warp // WO
                    for nt in range(NT):
                        addrs = [swizzle64((wt * NT + nt) * 8 + (l & 7), l >> 3) for l in range(32)]
                        raw = ldmatrix_x4(sB, addrs)  # [32][4][4 bytes]
                        if kind == "int8":
                            b = raw.view(np.int8).astype(np.float64)
                        else:
                            b = raw.copy().view(np.float16).astype(np.float64)  # [32][4][2]
                        for mt in range(MT):
                            tile = out0 // 16 + wo * MT + mt
                            if tile < tiles:
                                a, e = values[tile, step], meta[tile, step]
                            else:
                                a = np.zeros_like(values[0, 0])
                                e = np.full(32, pad_meta, np.uint32)
                            d = mma_sp(kind, convention, a.astype(np.float64), e, b)
                            key = (warp, mt, nt)
                            acc[key] = acc.get(key, 0) + d
            _epilogue(acc, out, out0, tok0, M, N, WO, MT, NT)
    return out
