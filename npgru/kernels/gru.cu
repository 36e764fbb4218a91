// npgru's CUDA path: the GRU sequence forward and backward as persistent kernels, the
// input-side weight gradients of token ids, and the softmax cross-entropy of the output layer.
//
// Symbols are those of docs/derivation.md and npgru/gru.py; arrays are row-major and
// time-major, exactly the buffers of gru.forward / gru.backward:
//   Hs (T+1, B, H) with Hs[0] = H0;  Z, R, H_tilde (T, B, H);  RH = R ⊙ H_{t-1} (d2l) or G
//   (reset_after), (T, B, H);  dA (T, B, 3H) = [dA_z|dA_r|dA_h]
//
// Why persistent kernels (Diamos et al. 2016): a time step is a few microseconds of GPU work,
// less than the host needs to launch one kernel from Python. So one launch runs all T steps:
// the blocks stay resident (cooperative launch) and meet at a grid-wide barrier whenever a
// step needs all of a vector that other blocks wrote. The forward pass needs 2 barriers per
// step (d2l: (R ⊙ H_{t-1}) W_hh needs all of R) or 1 (reset_after); the backward pass 2 or 1.
//
// Work split (after Appleyard et al. 2016): a tile is 32 output columns × BT batch rows.
// Its 8 warps split the reduction index k between them (k = warp, warp + 8, ...); each lane
// owns one column and keeps BT × NG sums in registers, so one load of W[k, c] serves BT rows
// and the input value in(b, k), the same for all lanes, is a broadcast. The warps' partial
// sums meet in shared memory, and the thread that owns (b, c) applies the gate equations.
// That owner is the same thread in every phase and step, so per-element scratch (S below)
// needs no barrier of its own.
//
// Weights on chip (Diamos et al. 2016): a step's product is paced by the latency of its weight
// loads, not by their number, so where the caller gives the kernel enough dynamic shared
// memory (`slab`), each block copies the 32 columns of every recurrent matrix that its tiles
// need into shared memory once, and every step reads them there instead of from L2. The
// blocks then walk the tiles so that all the tiles of one block share their columns. Without
// a slab (too little shared memory for 3H × 32 values, or fewer blocks than column tiles) the
// weights are read from global memory; nothing else differs, not even the order of the sums.
//
// Visibility: values written during a launch by other blocks are read with __ldcg (from L2,
// never a stale L1 line); the grid barrier orders the writes before the reads. Weights and
// the forward pass's outputs are read-only in a launch and read with __ldg.

#include <cooperative_groups.h>

namespace cg = cooperative_groups;

#define WARPS 8
#define THREADS (WARPS * 32)

// a block's shared array, and its dynamic shared memory (the size the launch gives), as
// macros so that tests/emulator can run the kernels on the CPU
#ifndef NPGRU_SHARED_ARRAY
#define NPGRU_SHARED_ARRAY(T, name, n) __shared__ T name[n]
#define NPGRU_DYNAMIC_SHARED(T, name)                                \
    extern __shared__ __align__(16) unsigned char npgru_dynamic_[]; \
    T* name = reinterpret_cast<T*>(npgru_dynamic_)
#endif

__device__ __forceinline__ float tanh_(float a) { return tanhf(a); }
__device__ __forceinline__ double tanh_(double a) { return tanh(a); }
__device__ __forceinline__ float exp_(float a) { return expf(a); }
__device__ __forceinline__ double exp_(double a) { return exp(a); }
__device__ __forceinline__ float log_(float a) { return logf(a); }
__device__ __forceinline__ double log_(double a) { return log(a); }
__device__ __forceinline__ float nan_(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double nan_(double) { return __longlong_as_double(0x7fffffffffffffffLL); }
__device__ __forceinline__ float inf_(float) { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double inf_(double) { return __longlong_as_double(0x7ff0000000000000LL); }

// σ(a) = (tanh(a/2) + 1)/2, as npgru.gru.sigmoid computes it: never overflows.
template <typename T>
__device__ __forceinline__ T sigmoid_(T a) {
    return (tanh_(a * T(0.5)) + T(1)) * T(0.5);
}

// the matrices of a tile product, one per gate: in global memory, rows of H elements; or in
// the block's slab, rows of 32 (the block's columns only)
template <typename T, int NG>
struct Mats {
    const T* w[NG];
};

// out[j] = Σ_k in(b, k) · W.w[j][k, c]  for j < NG (one matrix per gate), for the (b, c) this
// thread owns; ON_CHIP: W is in the slab and column c is at lane c − c0.
//   in(b, k) = in0[b·ld0 + k] for k < K0, in1[b·ld1 + k − K0] for K0 ≤ k < K
// Every thread of the block must call it (it holds __syncthreads); only threads
// threadIdx.x < BT·32 receive a result: b = b0 + threadIdx.x / 32, c = c0 + threadIdx.x % 32.
//
// The BT input rows are first staged in shared memory, KC values of k at a time, with loads
// that are coalesced over k: read in the k loop instead, every (b, k) would be a request of
// its own to L2 from every warp of every tile, and those requests, not the arithmetic, set
// the pace. `smem` holds the staged rows, then the warps' partial sums (never both at once).
// KC = 768 = 3 · 256 takes no more shared memory than those sums (8 warps × 3 gates × 32
// columns), and stages every product of H ≤ 256 in one round trip, 3H of the backward pass
// included.
#define KC 768

template <typename T, int NG, int BT, bool ON_CHIP>
__device__ __forceinline__ void tile_product(const T* in0, int ld0, int K0, const T* in1, int ld1,
                                             int K, Mats<T, NG> W, int H, int B, int b0, int c0,
                                             T* smem, T* out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = c0 + lane;
    T acc[NG][BT];
#pragma unroll
    for (int j = 0; j < NG; ++j)
#pragma unroll
        for (int i = 0; i < BT; ++i) acc[j][i] = T(0);
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kn = min(KC, K - k0);
        for (int e = threadIdx.x; e < BT * kn; e += THREADS) {
            const int i = e / kn, kk = e - i * kn, k = k0 + kk;
            T v = T(0);
            if (b0 + i < B)
                v = k < K0 ? __ldcg(in0 + (size_t)(b0 + i) * ld0 + k)
                           : __ldcg(in1 + (size_t)(b0 + i) * ld1 + (k - K0));
            smem[i * KC + kk] = v;
        }
        __syncthreads();
        if (c < H) {
#pragma unroll 4
            for (int kk = warp; kk < kn; kk += WARPS) {
                T x[BT];
#pragma unroll
                for (int i = 0; i < BT; ++i) x[i] = smem[i * KC + kk];  // a broadcast
                const size_t k = k0 + kk, kc = ON_CHIP ? k * 32 + lane : k * H + c;
#pragma unroll
                for (int j = 0; j < NG; ++j) {
                    const T w_kc = ON_CHIP ? W.w[j][kc] : __ldg(W.w[j] + kc);
#pragma unroll
                    for (int i = 0; i < BT; ++i) acc[j][i] += x[i] * w_kc;
                }
            }
        }
        __syncthreads();  // the staged rows are read: smem is free again
    }
#pragma unroll
    for (int j = 0; j < NG; ++j)
#pragma unroll
        for (int i = 0; i < BT; ++i) smem[((warp * NG + j) * BT + i) * 32 + lane] = acc[j][i];
    __syncthreads();
    if (threadIdx.x < BT * 32) {
        const int i = threadIdx.x >> 5;
#pragma unroll
        for (int j = 0; j < NG; ++j) {
            T s = T(0);
#pragma unroll
            for (int v = 0; v < WARPS; ++v) s += smem[((v * NG + j) * BT + i) * 32 + lane];
            out[j] = s;
        }
    }
    __syncthreads();  // smem is reused by the next tile
}

// tile_product from the slab's copy of the weights (W_on_chip) or from global memory (W)
template <typename T, int NG, int BT>
__device__ __forceinline__ void tile_product(bool on_chip, const T* in0, int ld0, int K0,
                                             const T* in1, int ld1, int K, Mats<T, NG> W,
                                             Mats<T, NG> W_on_chip, int H, int B, int b0, int c0,
                                             T* smem, T* out) {
    if (on_chip)
        tile_product<T, NG, BT, true>(in0, ld0, K0, in1, ld1, K, W_on_chip, H, B, b0, c0, smem,
                                      out);
    else
        tile_product<T, NG, BT, false>(in0, ld0, K0, in1, ld1, K, W, H, B, b0, c0, smem, out);
}

// The tiles of this block: tile = first, first + stride, ... < ntiles, tile = row tile ·
// ctiles + column tile. With the weights on chip the stride is a multiple of ctiles, so that
// every tile of a block has the block's columns (a block beyond the last multiple idles).
struct Tiles {
    int ctiles, ntiles, first, stride;
    bool on_chip;
};

__device__ __forceinline__ Tiles tiles_of_block(int B, int H, int BT, int slab) {
    Tiles walk;
    walk.ctiles = (H + 31) / 32;
    walk.ntiles = walk.ctiles * ((B + BT - 1) / BT);
    walk.on_chip = slab && (int)gridDim.x >= walk.ctiles;
    walk.stride = walk.on_chip ? (int)gridDim.x / walk.ctiles * walk.ctiles : (int)gridDim.x;
    walk.first = (int)blockIdx.x < walk.stride ? (int)blockIdx.x : walk.ntiles;
    return walk;
}

// rows [row0, row0 + rows) of the slab = the block's 32 columns of W (rows × H, row-major),
// zero beyond column H − 1
template <typename T>
__device__ __forceinline__ void to_slab(T* slab, int row0, const T* __restrict__ W, int rows,
                                        int H, int c0) {
    for (int e = threadIdx.x; e < rows * 32; e += THREADS) {
        const int k = e >> 5, c = c0 + (e & 31);
        slab[(size_t)(row0 + k) * 32 + (e & 31)] = c < H ? __ldg(W + (size_t)k * H + c) : T(0);
    }
}

// shared memory of a GRU kernel: the partial sums of 3 gates, or BT staged rows of KC values
#define SMEM_SIZE(BT) (WARPS * 3 * (BT) * 32 > (BT) * KC ? WARPS * 3 * (BT) * 32 : (BT) * KC)

// ---------------------------------------------------------------------------------------
// forward: eqs. 1–4 for t = 1..T
//
// The input side of a gate at step t for sequence b is row `row` of the gate's table XW_z,
// XW_r or XW_h (rows of H values) plus its bias b_z, b_r or b_h:
//   token ids: the table is W_xz, W_xr or W_xh (D, H) and row = ids[t, b], the one-hot
//   product as a row gather;
//   dense inputs: the table is X W_xz, X W_xr or X W_xh (T·B, H), formed by the caller, and
//   row = t·B + b.
// ids is read through its strides (ids_t, ids_b elements), so a transposed view needs no copy.
// A token id outside [0, D) cannot be read: its row of states becomes NaN (never a silently
// wrong number).

// the input row of step t for sequence b; −1 for an id outside [0, D)
__device__ __forceinline__ long long input_row(int t, int b, int B, int D,
                                               const long long* __restrict__ ids, int ids_t,
                                               int ids_b, int use_ids) {
    if (!use_ids) return (long long)t * B + b;
    const long long id = ids[(long long)t * ids_t + (long long)b * ids_b];
    return id >= 0 && id < D ? id : -1;
}

// XW[row, c] + b[c], the input side of one gate from its table and bias (NaN for row −1)
template <typename T>
__device__ __forceinline__ T input_side(long long row, int H, int c, const T* __restrict__ XW,
                                        const T* __restrict__ b) {
    return row < 0 ? nan_(T(0)) : __ldg(XW + row * H + c) + __ldg(b + c);
}

template <typename T, int BT>
__device__ void gru_forward(int T_, int B, int H, int D, int reset_after,
                            const long long* __restrict__ ids, int ids_t, int ids_b, int use_ids,
                            const T* __restrict__ XW_z, const T* __restrict__ XW_r,
                            const T* __restrict__ XW_h, const T* __restrict__ b_z,
                            const T* __restrict__ b_r, const T* __restrict__ b_h,
                            const T* __restrict__ W_hz, const T* __restrict__ W_hr,
                            const T* __restrict__ W_hh, const T* __restrict__ b_hh,
                            const T* H0, T* Hs, T* Z, T* R, T* H_tilde, T* RH, T* G,
                            int slab) {
    cg::grid_group grid = cg::this_grid();
    NPGRU_SHARED_ARRAY(T, red, SMEM_SIZE(BT));
    NPGRU_DYNAMIC_SHARED(T, W_slab);  // rows: W_hz, then W_hr, then W_hh, H each
    const Tiles walk = tiles_of_block(B, H, BT, slab);
    const int ctiles = walk.ctiles, ntiles = walk.ntiles;
    const size_t BH = (size_t)B * H;
    const int owner = threadIdx.x < BT * 32;
    const Mats<T, 3> W_h{{W_hz, W_hr, W_hh}};
    const Mats<T, 3> slab_h{{W_slab, W_slab + (size_t)H * 32, W_slab + (size_t)2 * H * 32}};
    if (walk.on_chip && walk.first < ntiles) {  // read after the grid barrier below
        const int c0 = walk.first % ctiles * 32;
        to_slab(W_slab, 0, W_hz, H, H, c0);
        to_slab(W_slab, H, W_hr, H, H, c0);
        to_slab(W_slab, 2 * H, W_hh, H, H, c0);
    }
    // Hs[0] = H0, then a barrier: every read of H0 is done before any state is written, so H0
    // may even be a state of this very workspace (the last one of a previous call; hence no
    // __restrict__ and no read-only cache for H0)
    const size_t stride = (size_t)gridDim.x * THREADS;
    for (size_t e = (size_t)blockIdx.x * THREADS + threadIdx.x; e < BH; e += stride)
        Hs[e] = __ldcg(H0 + e);
    grid.sync();
    for (int t = 0; t < T_; ++t) {
        const T* H_prev = Hs + t * BH;
        T* H_next = Hs + (t + 1) * BH;
        const size_t off = t * BH;
        for (int tile = walk.first; tile < ntiles; tile += walk.stride) {
            const int b0 = tile / ctiles * BT, c0 = tile % ctiles * 32;
            const int b = b0 + (threadIdx.x >> 5), c = c0 + (threadIdx.x & 31);
            const bool mine = owner && b < B && c < H;
            // the operands of the gate equations are loaded before the product, so that their
            // trips to memory overlap it instead of following it
            T x_z = T(0), x_r = T(0), x_h = T(0), h_prev = T(0);
            if (mine) {
                const long long row = input_row(t, b, B, D, ids, ids_t, ids_b, use_ids);
                x_z = input_side(row, H, c, XW_z, b_z);
                x_r = input_side(row, H, c, XW_r, b_r);
                if (reset_after) x_h = input_side(row, H, c, XW_h, b_h);
                h_prev = __ldcg(H_prev + (size_t)b * H + c);
            }
            T out[3];
            if (reset_after)  // [Z | R | G] pre-activations from one product
                tile_product<T, 3, BT>(walk.on_chip, H_prev, H, H, H_prev, H, H, W_h, slab_h, H, B,
                                       b0, c0, red, out);
            else
                tile_product<T, 2, BT>(walk.on_chip, H_prev, H, H, H_prev, H, H,
                                       Mats<T, 2>{{W_hz, W_hr}},
                                       Mats<T, 2>{{slab_h.w[0], slab_h.w[1]}}, H, B, b0, c0, red,
                                       out);
            if (!mine) continue;
            const size_t i = off + (size_t)b * H + c;
            const T z = sigmoid_(x_z + out[0]);  // eq. 1
            const T r = sigmoid_(x_r + out[1]);  // eq. 2
            Z[i] = z;
            R[i] = r;
            if (reset_after) {
                const T g = out[2] + __ldg(b_hh + c);
                const T h_tilde = tanh_(r * g + x_h);  // eq. 3'
                G[i] = g;
                H_tilde[i] = h_tilde;
                H_next[(size_t)b * H + c] = (h_prev - h_tilde) * z + h_tilde;  // eq. 4
            } else {
                RH[i] = r * h_prev;
            }
        }
        grid.sync();
        if (reset_after) continue;
        for (int tile = walk.first; tile < ntiles; tile += walk.stride) {  // d2l: eqs. 3, 4
            const int b0 = tile / ctiles * BT, c0 = tile % ctiles * 32;
            const int b = b0 + (threadIdx.x >> 5), c = c0 + (threadIdx.x & 31);
            const bool mine = owner && b < B && c < H;
            const size_t i = off + (size_t)b * H + c;
            T x_h = T(0), h_prev = T(0), z = T(0);
            if (mine) {  // Z[i]: this thread wrote it above (the same tiles, the same owner)
                const long long row = input_row(t, b, B, D, ids, ids_t, ids_b, use_ids);
                x_h = input_side(row, H, c, XW_h, b_h);
                h_prev = __ldcg(H_prev + (size_t)b * H + c);
                z = Z[i];
            }
            T out[1];
            tile_product<T, 1, BT>(walk.on_chip, RH + off, H, H, RH + off, H, H, Mats<T, 1>{{W_hh}},
                                   Mats<T, 1>{{slab_h.w[2]}}, H, B, b0, c0, red, out);
            if (!mine) continue;
            const T h_tilde = tanh_(out[0] + x_h);  // eq. 3
            H_tilde[i] = h_tilde;
            H_next[(size_t)b * H + c] = (h_prev - h_tilde) * z + h_tilde;  // eq. 4
        }
        grid.sync();
    }
}

// ---------------------------------------------------------------------------------------
// backward: eqs. 5–11 and 13 for t = T..1; the weight gradients (eq. 12) are left to the
// launches after it, from dA (and dG): large products, and token_grads below for token ids.
//
// S (B, H) is scratch: the part of dH_{t−1} that needs no product (dH_t ⊙ Z_t, and for d2l
// dRH ⊙ R_t), kept by the thread that owns the element until the products are done.

// what eqs. 5–8 read of the forward pass at one element i of a step
template <typename T>
struct Gates {
    T z, h_tilde, h_prev, r, g;
};

template <typename T>
__device__ __forceinline__ Gates<T> load_gates(size_t i, int reset_after, const T* __restrict__ Hs,
                                               const T* __restrict__ Z, const T* __restrict__ R,
                                               const T* __restrict__ H_tilde,
                                               const T* __restrict__ G) {
    Gates<T> v;
    v.z = __ldg(Z + i);
    v.h_tilde = __ldg(H_tilde + i);
    v.h_prev = __ldg(Hs + i);  // Hs[t] is H_{t-1} of step t: Hs[0] = H0
    v.r = reset_after ? __ldg(R + i) : T(0);
    v.g = reset_after ? __ldg(G + i) : T(0);
    return v;
}

// eqs. 5–8 (and reset_after's dG, dA_r) at one element of step t, given dH = ∂ℓ/∂H_t
template <typename T>
__device__ __forceinline__ void gate_grads(int t, int b, int c, int B, int H, int reset_after,
                                           T dH, const Gates<T>& v, T* dA, T* dG, T* S) {
    const T one_minus_z = T(1) - v.z;
    T* a = dA + ((size_t)t * B + b) * 3 * H;
    const T dA_h = (T(1) - v.h_tilde * v.h_tilde) * (dH * one_minus_z);  // eqs. 5, 7
    a[c] = (v.h_prev - v.h_tilde) * dH * (v.z * one_minus_z);            // eqs. 6, 8: dA_z
    a[2 * H + c] = dA_h;
    if (reset_after) {
        dG[((size_t)t * B + b) * H + c] = dA_h * v.r;
        a[H + c] = dA_h * v.g * (v.r * (T(1) - v.r));  // dA_r
    }
    S[(size_t)b * H + c] = dH * v.z;  // eq. 11, the direct path
}

template <typename T, int BT>
__device__ void gru_backward(int T_, int B, int H, int reset_after, const T* __restrict__ dHs,
                             int has_dHs, const T* __restrict__ dH_last, int has_dH_last,
                             const T* __restrict__ Hs, const T* __restrict__ Z,
                             const T* __restrict__ R, const T* __restrict__ H_tilde,
                             const T* __restrict__ G, const T* __restrict__ W_hT,
                             const T* __restrict__ W_hhT, T* dA, T* dG, T* S, T* dH0, int slab) {
    cg::grid_group grid = cg::this_grid();
    NPGRU_SHARED_ARRAY(T, red, SMEM_SIZE(BT));
    NPGRU_DYNAMIC_SHARED(T, W_slab);  // rows: W_hᵀ (2H or 3H), then W_hhᵀ (H, d2l)
    const Tiles walk = tiles_of_block(B, H, BT, slab);
    const int ctiles = walk.ctiles, ntiles = walk.ntiles;
    const size_t BH = (size_t)B * H, B3H = 3 * BH;
    const int owner = threadIdx.x < BT * 32;
    const Mats<T, 1> slab_hT{{W_slab}}, slab_hhT{{W_slab + (size_t)2 * H * 32}};
    if (walk.on_chip && walk.first < ntiles) {  // read after the grid barrier below
        const int c0 = walk.first % ctiles * 32;
        to_slab(W_slab, 0, W_hT, (reset_after ? 3 : 2) * H, H, c0);
        if (!reset_after) to_slab(W_slab, 2 * H, W_hhT, H, H, c0);
    }
    // step T: dH_T = dHs[T] + dH_last (eq. 13)
    for (int tile = walk.first; tile < ntiles; tile += walk.stride) {
        const int b = tile / ctiles * BT + (threadIdx.x >> 5), c = tile % ctiles * 32 + (threadIdx.x & 31);
        if (!owner || b >= B || c >= H) continue;
        const size_t e = (size_t)b * H + c;
        T dH = has_dHs ? __ldg(dHs + (size_t)(T_ - 1) * BH + e) : T(0);
        if (has_dH_last) dH += __ldg(dH_last + e);
        const Gates<T> v = load_gates(e + (T_ - 1) * BH, reset_after, Hs, Z, R, H_tilde, G);
        gate_grads<T>(T_ - 1, b, c, B, H, reset_after, dH, v, dA, dG, S);
    }
    grid.sync();
    for (int t = T_ - 1; t >= 0; --t) {
        // the operands of the element-wise equations below are loaded before each product,
        // so that their trips to memory overlap it
        if (!reset_after) {  // eqs. 9, 10: dRH = dA_h W_hhᵀ, then dA_r
            for (int tile = walk.first; tile < ntiles; tile += walk.stride) {
                const int b0 = tile / ctiles * BT, c0 = tile % ctiles * 32;
                const int b = b0 + (threadIdx.x >> 5), c = c0 + (threadIdx.x & 31);
                const bool mine = owner && b < B && c < H;
                const size_t i = t * BH + (size_t)b * H + c;
                T r = T(0), h_prev = T(0);
                if (mine) {
                    r = __ldg(R + i);
                    h_prev = __ldg(Hs + i);
                }
                T out[1];
                const T* dA_h = dA + t * B3H + 2 * H;
                tile_product<T, 1, BT>(walk.on_chip, dA_h, 3 * H, H, dA_h, 3 * H, H,
                                       Mats<T, 1>{{W_hhT}}, slab_hhT, H, B, b0, c0, red, out);
                if (!mine) continue;
                const T dRH = out[0];
                dA[t * B3H + (size_t)b * 3 * H + H + c] = dRH * h_prev * (r * (T(1) - r));
                S[(size_t)b * H + c] += dRH * r;  // eq. 11, through R ⊙ H_{t-1}
            }
            grid.sync();
        }
        // eq. 11, through the gates: [dA_z | dA_r] W_hᵀ (d2l), [dA_z | dA_r | dG] W_hᵀ
        for (int tile = walk.first; tile < ntiles; tile += walk.stride) {
            const int b0 = tile / ctiles * BT, c0 = tile % ctiles * 32;
            const int b = b0 + (threadIdx.x >> 5), c = c0 + (threadIdx.x & 31);
            const bool mine = owner && b < B && c < H;
            const size_t e = (size_t)b * H + c;
            T s = T(0), dH_out = T(0);  // S: this thread's own scratch; dHs at step t − 1
            Gates<T> v{};
            if (mine) {
                s = S[e];
                if (t > 0) {
                    if (has_dHs) dH_out = __ldg(dHs + (t - 1) * BH + e);
                    v = load_gates(e + (t - 1) * BH, reset_after, Hs, Z, R, H_tilde, G);
                }
            }
            T out[1];
            if (reset_after)
                tile_product<T, 1, BT>(walk.on_chip, dA + t * B3H, 3 * H, 2 * H, dG + t * BH, H,
                                       3 * H, Mats<T, 1>{{W_hT}}, slab_hT, H, B, b0, c0, red,
                                       out);
            else
                tile_product<T, 1, BT>(walk.on_chip, dA + t * B3H, 3 * H, 2 * H, dA + t * B3H,
                                       3 * H, 2 * H, Mats<T, 1>{{W_hT}}, slab_hT, H, B, b0, c0,
                                       red, out);
            if (!mine) continue;
            const T dH_prev = s + out[0];
            if (t == 0)
                dH0[e] = dH_prev;
            else  // eq. 13 for step t − 1, then its gate gradients
                gate_grads<T>(t - 1, b, c, B, H, reset_after, dH_prev + dH_out, v, dA, dG, S);
        }
        grid.sync();
    }
}

// ---------------------------------------------------------------------------------------
// the input-side gradients of token ids: eq. 12 with one-hot X_t, after the backward launch
//
// Row d of dW_xz, dW_xr, dW_xh is the sum of the rows of dA_z, dA_r, dA_h whose token is d,
// and db_z, db_r, db_h are the sums of all rows: the product onehot(ids)ᵀ dA without the
// one-hot matrix, in one launch that writes straight into the caller's gradient arrays (the
// reference's one-hot product takes six launches, and six copies into those arrays).
// A work item is 32 columns c of dA = [dA_z|dA_r|dA_h] and a group of TOKENS_PER_ITEM ids
// d0, d0 + 1, ...; its 8 warps split the T·B rows, each adding into an accumulator of its
// own in shared memory, so no two threads ever add into one place (no atomics) and the
// warps' sums meet in a fixed order: the same bits on every run. ids is read through its
// strides, as in the forward pass; an id outside [0, D) adds to no row of dW_x (its states,
// hence its rows of dA, are NaN already).
#define TOKENS_PER_ITEM 16

template <typename T>
__device__ void token_grads(int T_, int B, int H, int D, const long long* __restrict__ ids,
                            int ids_t, int ids_b, const T* __restrict__ dA, T* dW_xz, T* dW_xr,
                            T* dW_xh, T* db_z, T* db_r, T* db_h) {
    // acc[warp][i][lane]: the warp's sum for token d0 + i, column c; col[warp][lane]: its sum
    // of dA[n, c] over all its rows
    NPGRU_SHARED_ARRAY(T, acc, WARPS * TOKENS_PER_ITEM * 32);
    NPGRU_SHARED_ARRAY(T, col, WARPS * 32);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int N = T_ * B, H3 = 3 * H, per = (N + WARPS - 1) / WARPS;
    const int col_tiles = (H3 + 31) / 32, groups = (D + TOKENS_PER_ITEM - 1) / TOKENS_PER_ITEM;
    T* const mine = acc + warp * TOKENS_PER_ITEM * 32;
    for (int item = blockIdx.x; item < col_tiles * groups; item += gridDim.x) {
        const int c = (item % col_tiles) * 32 + lane, d0 = (item / col_tiles) * TOKENS_PER_ITEM;
        for (int i = 0; i < TOKENS_PER_ITEM; ++i) mine[i * 32 + lane] = T(0);
        T sum = T(0);
        if (c < H3) {
            const int n0 = min(N, warp * per), n1 = min(N, n0 + per);
            int t = n0 / B, b = n0 - t * B;  // row n = t·B + b of dA, time-major
#pragma unroll 4
            for (int n = n0; n < n1; ++n) {
                const long long i = __ldg(ids + (size_t)t * ids_t + (size_t)b * ids_b) - d0;
                const T v = __ldg(dA + (size_t)n * H3 + c);
                sum += v;
                if (i >= 0 && i < TOKENS_PER_ITEM) mine[i * 32 + lane] += v;
                if (++b == B) b = 0, ++t;
            }
        }
        col[warp * 32 + lane] = sum;
        __syncthreads();
        if (c < H3) {
            const int j = c / H, unit = c - j * H;  // gate j (z, r, h)
            // a select, not an array of pointers indexed at run time (that lives in memory)
            T* const dW_x = j == 0 ? dW_xz : j == 1 ? dW_xr : dW_xh;
            T* const db = j == 0 ? db_z : j == 1 ? db_r : db_h;
            for (int i = warp; i < TOKENS_PER_ITEM && d0 + i < D; i += WARPS) {
                T s = T(0);
                for (int w = 0; w < WARPS; ++w) s += acc[(w * TOKENS_PER_ITEM + i) * 32 + lane];
                dW_x[(size_t)(d0 + i) * H + unit] = s;
            }
            if (d0 == 0 && warp == 0) {
                T s = T(0);
                for (int w = 0; w < WARPS; ++w) s += col[w * 32 + lane];
                db[unit] = s;
            }
        }
        __syncthreads();  // acc and col are read: free for the next work item
    }
}

// ---------------------------------------------------------------------------------------
// softmax cross-entropy (eqs. 14, 15), one warp per row of the logits O (N, V):
//   loss_rows[n] = log Σ_v exp(O[n, v]) − O[n, y_n],   dO[n, :] = (softmax(O[n, :]) − onehot(y_n)) / N
// then, after a grid barrier, block 0 takes the mean of loss_rows into loss[0], in a fixed
// order (the same bits on every run), so that the loss costs one launch, not three.
// A label outside [0, V) gives NaN in its row and its loss, never a silently wrong loss.

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int d = 16; d > 0; d >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, d));
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
}

template <typename T>
__device__ void softmax_xent(int N, int V, const T* __restrict__ O, const long long* __restrict__ y,
                             T* dO, T* loss_rows, T* loss) {
    const int lane = threadIdx.x & 31;
    const int warps = gridDim.x * (blockDim.x >> 5);
    for (int n = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; n < N; n += warps) {
        const T* o = O + (size_t)n * V;
        T m = -inf_(T(0));
        for (int v = lane; v < V; v += 32) m = fmax(m, o[v]);
        m = warp_max(m);
        T s = T(0);
        for (int v = lane; v < V; v += 32) s += exp_(o[v] - m);
        s = warp_sum(s);
        const long long label = y[n];
        const bool bad = label < 0 || label >= V;
        const T nan = nan_(T(0));
        for (int v = lane; v < V; v += 32) {
            const T p = exp_(o[v] - m) / s;
            dO[(size_t)n * V + v] = bad ? nan : (p - (v == label ? T(1) : T(0))) / T(N);
        }
        if (lane == 0) loss_rows[n] = bad ? nan : log_(s) - (o[label] - m);
    }
    cg::this_grid().sync();
    if (blockIdx.x != 0) return;
    NPGRU_SHARED_ARRAY(T, partial, WARPS);
    T s = T(0);
    for (int n = threadIdx.x; n < N; n += THREADS) s += __ldcg(loss_rows + n);
    s = warp_sum(s);
    if (lane == 0) partial[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        T total = T(0);
        for (int w = 0; w < WARPS; ++w) total += partial[w];
        loss[0] = total / T(N);  // eq. 14
    }
}

// ---------------------------------------------------------------------------------------
// the entry points: one per element type and tile height (BT batch rows per tile)

#define GRU_KERNELS(T, SUFFIX, BT)                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS, 1) gru_forward_##SUFFIX##_bt##BT(         \
        int T_, int B, int H, int D, int reset_after, const long long* ids, int ids_t, int ids_b, \
        int use_ids, const T* XW_z, const T* XW_r, const T* XW_h, const T* b_z, const T* b_r,     \
        const T* b_h, const T* W_hz, const T* W_hr, const T* W_hh, const T* b_hh, const T* H0,    \
        T* Hs, T* Z, T* R, T* H_tilde, T* RH, T* G, int slab) {                                   \
        gru_forward<T, BT>(T_, B, H, D, reset_after, ids, ids_t, ids_b, use_ids, XW_z, XW_r,      \
                           XW_h, b_z, b_r, b_h, W_hz, W_hr, W_hh, b_hh, H0, Hs, Z, R, H_tilde, RH, \
                           G, slab);                                                            \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 1) gru_backward_##SUFFIX##_bt##BT(        \
        int T_, int B, int H, int reset_after, const T* dHs, int has_dHs, const T* dH_last,      \
        int has_dH_last, const T* Hs, const T* Z, const T* R, const T* H_tilde, const T* G,      \
        const T* W_hT, const T* W_hhT, T* dA, T* dG, T* S, T* dH0, int slab) {                  \
        gru_backward<T, BT>(T_, B, H, reset_after, dHs, has_dHs, dH_last, has_dH_last, Hs, Z, R, \
                            H_tilde, G, W_hT, W_hhT, dA, dG, S, dH0, slab);                     \
    }

GRU_KERNELS(float, f32, 4)
GRU_KERNELS(float, f32, 8)
GRU_KERNELS(double, f64, 4)
GRU_KERNELS(double, f64, 8)

#define TOKEN_GRADS(T, SUFFIX)                                                                 \
    extern "C" __global__ void token_grads_##SUFFIX(                                            \
        int T_, int B, int H, int D, const long long* ids, int ids_t, int ids_b, const T* dA,    \
        T* dW_xz, T* dW_xr, T* dW_xh, T* db_z, T* db_r, T* db_h) {                               \
        token_grads<T>(T_, B, H, D, ids, ids_t, ids_b, dA, dW_xz, dW_xr, dW_xh, db_z, db_r,     \
                       db_h);                                                                   \
    }

TOKEN_GRADS(float, f32)
TOKEN_GRADS(double, f64)

extern "C" __global__ void softmax_xent_f32(int N, int V, const float* O, const long long* y,
                                            float* dO, float* loss_rows, float* loss) {
    softmax_xent<float>(N, V, O, y, dO, loss_rows, loss);
}

extern "C" __global__ void softmax_xent_f64(int N, int V, const double* O, const long long* y,
                                            double* dO, double* loss_rows, double* loss) {
    softmax_xent<double>(N, V, O, y, dO, loss_rows, loss);
}
