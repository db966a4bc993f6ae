// LSTM gate kernels for the cupy backend, gates i, f, g, o (cuDNN/PyTorch order) in four
// H-wide blocks of each 4H row. One thread per (n, j) handles all four gates of unit j.
// The recurrent GEMM stays cuBLAS (one per step); everything elementwise is fused here.
#include "common.cuh"

// The cell of one unit of one row. a points at its input gate; the forget, cell and output
// gates are H, 2H and 3H further. In: pre-activations without the recurrent part, which
// comes as r_i..r_o; out: the activated gates, kept for backward. Returns the new c.
template <typename T>
__device__ __forceinline__ T lstm_cell(T* a, long long H, T r_i, T r_f, T r_g, T r_o, T c_prev, T* h) {
    T i = sigmoid_(a[0] + r_i);
    T f = sigmoid_(a[H] + r_f);
    T g = tanh_(a[2 * H] + r_g);
    T o = sigmoid_(a[3 * H] + r_o);
    a[0] = i;
    a[H] = f;
    a[2 * H] = g;
    a[3 * H] = o;
    T c = f * c_prev + i * g;
    *h = o * tanh_(c);
    return c;
}

// Its backward: the activated gates at a become d(pre-activations); dh_t is the whole
// gradient reaching h_t. Returns the gradient for c_{t-1}.
template <typename T>
__device__ __forceinline__ T lstm_cell_backward(T* a, long long H, T dh_t, T dc_next, T c, T c_prev) {
    T i = a[0], f = a[H], g = a[2 * H], o = a[3 * H];
    T tanh_c = tanh_(c);
    T dc_t = dc_next + dh_t * o * (T(1) - tanh_c * tanh_c);
    a[0] = dc_t * g * i * (T(1) - i);
    a[H] = dc_t * c_prev * f * (T(1) - f);
    a[2 * H] = dc_t * i * (T(1) - g * g);
    a[3 * H] = dh_t * tanh_c * o * (T(1) - o);
    return dc_t * f;
}

// Forward step. gates: (N, 4H), in: xw_t, out: activated gates (kept for backward).
// rec: (N, 4H) = h_{t-1} @ Wh. c_prev, c, h: (N, H).
template <typename T>
__global__ void lstm_forward_step(T* __restrict__ gates, const T* __restrict__ rec,
                                  const T* __restrict__ c_prev, T* __restrict__ c,
                                  T* __restrict__ h, int N, int H) {
    GRID_STRIDE(k, (long long)N * H) {
        long long n = k / H, j = k % H;
        const T* r = rec + n * 4 * H + j;
        c[k] = lstm_cell(gates + n * 4 * H + j, H, r[0], r[H], r[2 * H], r[3 * H], c_prev[k], h + k);
    }
}

// Backward step. gates: (N, 4H), in: activated gates, out: d(pre-activations).
// dh: gradient from step t+1 (read only; the caller then sets dh = gates @ Wh^T).
// dc: in: gradient from step t+1, out: gradient for c_{t-1}.
template <typename T>
__global__ void lstm_backward_step(T* __restrict__ gates, const T* __restrict__ dh,
                                   const T* __restrict__ dhs_t, const T* __restrict__ c,
                                   const T* __restrict__ c_prev, T* __restrict__ dc, int N,
                                   int H) {
    GRID_STRIDE(k, (long long)N * H) {
        long long n = k / H, j = k % H;
        dc[k] = lstm_cell_backward(gates + n * 4 * H + j, H, dh[k] + dhs_t[k], dc[k], c[k], c_prev[k]);
    }
}

// ---- fused steps: the recurrent product and the gate math in one launch, no cuBLAS ------
// A block of W warps owns W hidden units, one per warp. Forward phase 1: the warp's four gate
// columns q*H + j of h_prev @ Wh (one pass over h_prev feeds all four). Backward phase 1:
// the gradient reaching h_t for its unit, dA_{t+1} @ Wh^T. Phase 2: the block's threads do
// the gate math of the block's units. A step reads only what the previous launch wrote.

// gates (N, 4H): in xw_t, out the activated gates. WhT = Wh^T, (4H, H) row-major.
template <typename T>
__global__ void lstm_step_forward(T* __restrict__ gates, const T* __restrict__ WhT, const T* __restrict__ h_prev,
                                  const T* __restrict__ c_prev, T* __restrict__ c, T* __restrict__ h, int N, int H) {
    DYNAMIC_SHARED(T, rec);  // [warps][4][N]
    int warp = threadIdx.x / WARP, warps = blockDim.x / WARP, j0 = blockIdx.x * warps;
    int j = j0 + warp;
    if (j < H) warp_dot<T, 4>(h_prev, WhT + (long long)j * H, (long long)H * H, N, H, rec + warp * 4 * N);
    __syncthreads();
    for (int idx = threadIdx.x; idx < warps * N; idx += blockDim.x) {
        int u = idx / N, n = idx % N, jj = j0 + u;
        if (jj >= H) continue;
        const T* r = rec + u * 4 * N + n;
        long long k = (long long)n * H + jj;
        c[k] = lstm_cell(gates + (long long)n * 4 * H + jj, H, r[0], r[N], r[2 * N], r[3 * N], c_prev[k], h + k);
    }
}

// gates (N, 4H): in the activated gates, out d(pre-activations). The gradient reaching h_t
// is next @ Wh^T with next = dA_{t+1} (next_is_dA = 1), or next itself (the gradient at
// h_T, next_is_dA = 0). dc: in the gradient reaching c_t, out the one reaching c_{t-1}.
template <typename T>
__global__ void lstm_step_backward(T* __restrict__ gates, const T* __restrict__ next, int next_is_dA,
                                   const T* __restrict__ Wh, const T* __restrict__ dhs_t, const T* __restrict__ c,
                                   const T* __restrict__ c_prev, T* __restrict__ dc, int N, int H) {
    DYNAMIC_SHARED(T, dh);  // [warps][N]
    int warp = threadIdx.x / WARP, warps = blockDim.x / WARP, j0 = blockIdx.x * warps;
    int j = j0 + warp;
    if (j < H) {
        if (next_is_dA) {
            warp_dot<T, 1>(next, Wh + (long long)j * 4 * H, 0, N, 4 * H, dh + warp * N);
        } else {
            for (int n = threadIdx.x % WARP; n < N; n += WARP) dh[warp * N + n] = next[(long long)n * H + j];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < warps * N; idx += blockDim.x) {
        int u = idx / N, n = idx % N, jj = j0 + u;
        if (jj >= H) continue;
        long long k = (long long)n * H + jj;
        dc[k] = lstm_cell_backward(gates + (long long)n * 4 * H + jj, H, dh[u * N + n] + dhs_t[k], dc[k], c[k],
                                   c_prev[k]);
    }
}
