// The recurrence kernels of the cupy backend, written once and instantiated per cell
// (cells.cuh: RnnCell, LstmCell, GruCell) and per precision. Each launch runs one step t:
//   gates_forward / gates_backward: the cell's math only; the caller computes the recurrent
//       product (h_{t-1} Wh, or dhw_{t+1} Wh^T) with one cuBLAS GEMM per step.
//   step_forward / step_backward: the product and the math in one launch, no cuBLAS.
// The two kinds take the same arguments after their first (the product, or what it is made
// of). Arrays are row-major blocks of the time-major buffers: (N, H) for states, (N, G) for
// gates, G = Cell::GATES * H; row n's gate q of unit j is at n * G + q * H + j. An array a cell
// does not have (c but for the LSTM, the RNN's h and saved, ...) is a null pointer and is never
// touched. Step t reads only what earlier launches finished, so the loop needs no grid-wide
// synchronization; no argument aliases another.
// Variable lengths: lengths (N,) or null (all rows run T steps); row n's steps t >= lengths[n]
// are padding, always a suffix of the row. Forward writes h = 0 there and nothing else (the
// next step of that row is padding too, so no one reads its state). Backward writes zero
// dhw and dxw there and leaves the carry alone; the row's last live step reads the gradient
// given at h_T (dh_T) itself, which is what padded steps would have passed on unchanged.
#include "cells.cuh"

template <typename T>
__device__ __forceinline__ T load(const T* p, long long k) { return p ? p[k] : T(0); }

__device__ __forceinline__ bool padded(const long long* lengths, int n, int t) { return lengths && t >= lengths[n]; }

// Forward of unit j of row n. rec[q * rec_stride]: the recurrent product of gate q.
template <class Cell, typename T>
__device__ __forceinline__ void forward_unit(const T* rec, long long rec_stride, T* gates, const T* bh,
                                             const T* h_prev, const T* c_prev, T* h, T* saved,
                                             const long long* lengths, int t, int n, int j, int H) {
    constexpr int GATES = Cell::GATES;
    long long k = (long long)n * H + j;
    T* a = gates + (long long)n * GATES * H + j;
    if (padded(lengths, n, t)) {
        if constexpr (Cell::GATES_ARE_H) a[0] = T(0);
        else h[k] = T(0);
        return;
    }
    T g[GATES], r[GATES];
#pragma unroll
    for (int q = 0; q < GATES; ++q) {
        g[q] = a[q * H];
        r[q] = rec[q * rec_stride] + load(bh, (long long)q * H + j);
    }
    T kept = T(0);
    T h_t = Cell::forward(g, r, Prev<T>{h_prev[k], load(c_prev, k)}, kept);
#pragma unroll
    for (int q = 0; q < GATES; ++q) a[q * H] = g[q];
    if constexpr (!Cell::GATES_ARE_H) h[k] = h_t;
    if (saved) saved[k] = kept;
}

// Backward of unit j of row n; dh: the gradient reaching h_t through Wh. What step t+1 sent
// back (dh and the carry) is multiplied by its scale here, where it arrives.
template <class Cell, typename T>
__device__ __forceinline__ void backward_unit(T dh, T* gates, T* dxw, T scale, const T* dh_T, const T* dhs,
                                              long long dhs_row, long long dhs_col, const T* h_prev, const T* c_prev,
                                              const T* saved, T* carry, const long long* lengths, int t, int n,
                                              int j, int H) {
    constexpr int GATES = Cell::GATES;
    long long k = (long long)n * H + j, row = (long long)n * GATES * H + j;
    // dhw goes over the gates, but the RNN's gate is h, which the layer still needs
    T* dhw = Cell::GATES_ARE_H ? dxw : gates;
    T g[GATES], dx[GATES] = {};
    if (padded(lengths, n, t)) {
#pragma unroll
        for (int q = 0; q < GATES; ++q) dhw[row + q * H] = T(0);
        if (!Cell::GATES_ARE_H && dxw) {
#pragma unroll
            for (int q = 0; q < GATES; ++q) dxw[row + q * H] = T(0);
        }
        return;
    }
    if (lengths && t + 1 == lengths[n]) {  // the row's last step: nothing of step t+1 arrives
        dh = dh_T[k];
        scale = T(1);
    }
#pragma unroll
    for (int q = 0; q < GATES; ++q) g[q] = gates[row + q * H];
    T carried = scale * load(carry, k);
    Cell::backward(g, dx, scale * dh + dhs[n * dhs_row + j * dhs_col], Prev<T>{h_prev[k], load(c_prev, k)},
                   load(saved, k), carried);
#pragma unroll
    for (int q = 0; q < GATES; ++q) dhw[row + q * H] = g[q];
    if (!Cell::GATES_ARE_H && dxw) {  // the GRU's own dxw
#pragma unroll
        for (int q = 0; q < GATES; ++q) dxw[row + q * H] = dx[q];
    }
    if (carry) carry[k] = carried;
}

// ---- cuBLAS strategy: one thread per (row, unit) -----------------------------------------

// Forward step t.
//   rec     (N, G)  h_{t-1} Wh from cuBLAS. Read only.
//   gates   (N, G)  in x_t Wx + b, out the activated gates (the RNN's: h_t). OVERWRITTEN.
//   bh      (G,) or null: the recurrent bias (the GRU's), added to rec.
//   h_prev  (N, H)  h_{t-1}. c_prev (N, H) or null: the LSTM's c_{t-1}. Read only.
//   h       (N, H)  out h_t; null for the RNN (its h is its gate).
//   saved   (N, H) or null: out what the cell saves (LSTM c_t, GRU hn_t).
//   lengths (N,) int64 or null, t: see the top of the file.
template <class Cell, typename T>
__global__ void gates_forward(const T* __restrict__ rec, T* __restrict__ gates, const T* __restrict__ bh,
                              const T* __restrict__ h_prev, const T* __restrict__ c_prev, T* __restrict__ h,
                              T* __restrict__ saved, const long long* __restrict__ lengths, int t, int N, int H) {
    GRID_STRIDE(k, (long long)N * H) {
        int n = int(k / H), j = int(k % H);
        forward_unit<Cell>(rec + (long long)n * Cell::GATES * H + j, H, gates, bh, h_prev, c_prev, h, saved, lengths, t,
                           n, j, H);
    }
}

// Backward step t.
//   dh      (N, H)  dhw_{t+1} Wh^T from cuBLAS, or the gradient given at h_T. Read only.
//   gates   (N, G)  in the activated gates; out dhw_t (OVERWRITTEN), except the RNN's (h_t: read only).
//   dxw     (N, G)  out dxw_t for the RNN (where it is dhw_t too) and the GRU; null for the LSTM,
//                   whose dxw is dhw, written over its gates.
//   scale   what step t+1 sent back (dh and the carry) is multiplied by it: step t+1's factor
//           of randomized truncation; 1 at t = T-1 and without truncation.
//   dh_T    (N, H) the gradient given at h_T, read at a row's last live step; null without lengths.
//   dhs     the upstream gradient at h_t: element (n, j) at dhs[n * dhs_row + j * dhs_col] (any
//           strided view). Read only.
//   h_prev, c_prev  as in gates_forward. saved (N, H) or null: what forward saved at t. Read only.
//   carry   (N, H) or null (the RNN): in the cell's carried gradient from step t+1, out to t-1.
//   lengths (N,) int64 or null, t: see the top of the file.
template <class Cell, typename T>
__global__ void gates_backward(const T* __restrict__ dh, T* __restrict__ gates, T* __restrict__ dxw, T scale,
                               const T* __restrict__ dh_T, const T* __restrict__ dhs, long long dhs_row,
                               long long dhs_col, const T* __restrict__ h_prev, const T* __restrict__ c_prev,
                               const T* __restrict__ saved, T* __restrict__ carry,
                               const long long* __restrict__ lengths, int t, int N, int H) {
    GRID_STRIDE(k, (long long)N * H) {
        int n = int(k / H), j = int(k % H);
        backward_unit<Cell>(dh[k], gates, dxw, scale, dh_T, dhs, dhs_row, dhs_col, h_prev, c_prev, saved, carry,
                            lengths, t, n, j, H);
    }
}

// ---- fused strategy: the recurrent product in the same launch -----------------------------
// A block of W warps owns W hidden units, one per warp. Phase 1: the warp's share of the
// recurrent product for all N rows, into shared memory (warp_dot). Phase 2: the block's
// threads run the cell on the block's units.

// Forward step t: gates_forward with rec computed here from WhT = Wh^T, (G, H) row-major.
// Dynamic shared memory: W * G * N values.
template <class Cell, typename T>
__global__ void step_forward(const T* __restrict__ WhT, T* __restrict__ gates, const T* __restrict__ bh,
                             const T* __restrict__ h_prev, const T* __restrict__ c_prev, T* __restrict__ h,
                             T* __restrict__ saved, const long long* __restrict__ lengths, int t, int N, int H) {
    constexpr int GATES = Cell::GATES;
    DYNAMIC_SHARED(T, rec);  // [warps][G][N]
    int warp = threadIdx.x / WARP, warps = blockDim.x / WARP, j0 = blockIdx.x * warps;
    // the unit's G columns q * H + j of Wh are rows H apart in WhT: one pass over h_prev feeds all
    if (j0 + warp < H) warp_dot<T, GATES>(h_prev, WhT + (long long)(j0 + warp) * H, (long long)H * H, N, H, rec + warp * GATES * N);
    __syncthreads();
    for (int idx = threadIdx.x; idx < warps * N; idx += blockDim.x) {
        int u = idx / N, n = idx % N;
        if (j0 + u < H)
            forward_unit<Cell>(rec + u * GATES * N + n, N, gates, bh, h_prev, c_prev, h, saved, lengths, t, n, j0 + u, H);
    }
}

// Backward step t: gates_backward with the gradient reaching h_t through Wh computed here:
// next @ Wh^T where next = dhw_{t+1}, (N, G) (next_is_dhw = 1), or next itself, the gradient
// given at h_T, (N, H) (next_is_dhw = 0). Wh (H, G) row-major. Dynamic shared memory: W * N values.
template <class Cell, typename T>
__global__ void step_backward(const T* __restrict__ next, int next_is_dhw, const T* __restrict__ Wh,
                              T* __restrict__ gates, T* __restrict__ dxw, T scale, const T* __restrict__ dh_T,
                              const T* __restrict__ dhs, long long dhs_row, long long dhs_col,
                              const T* __restrict__ h_prev, const T* __restrict__ c_prev, const T* __restrict__ saved,
                              T* __restrict__ carry, const long long* __restrict__ lengths, int t, int N, int H) {
    constexpr int GATES = Cell::GATES;
    DYNAMIC_SHARED(T, dh);  // [warps][N]
    int warp = threadIdx.x / WARP, warps = blockDim.x / WARP, j0 = blockIdx.x * warps;
    int j = j0 + warp;
    if (j < H) {
        if (next_is_dhw) {
            warp_dot<T, 1>(next, Wh + (long long)j * GATES * H, 0, N, GATES * H, dh + warp * N);
        } else {
            for (int n = threadIdx.x % WARP; n < N; n += WARP) dh[warp * N + n] = next[(long long)n * H + j];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < warps * N; idx += blockDim.x) {
        int u = idx / N, n = idx % N;
        if (j0 + u < H)
            backward_unit<Cell>(dh[u * N + n], gates, dxw, scale, dh_T, dhs, dhs_row, dhs_col, h_prev, c_prev, saved,
                                carry, lengths, t, n, j0 + u, H);
    }
}

// out[n, j] = X[n, :] . W[j, :] for every j < J: X (N, K), W (J, K), out (N, J); one warp per j.
// (The fused backward's last product: dhw_0 @ Wh^T.) Dynamic shared memory: W * N values.
template <typename T>
__global__ void recurrent_dot(T* __restrict__ out, const T* __restrict__ X, const T* __restrict__ W, int N, int K,
                              int J) {
    DYNAMIC_SHARED(T, sums);  // [warps][N]
    int warp = threadIdx.x / WARP, j = blockIdx.x * (blockDim.x / WARP) + warp;
    if (j >= J) return;  // whole warps leave together; no block barrier follows
    warp_dot<T, 1>(X, W + (long long)j * K, 0, N, K, sums + warp * N);
    __syncwarp();
    for (int n = threadIdx.x % WARP; n < N; n += WARP) out[(long long)n * J + j] = sums[warp * N + n];
}
