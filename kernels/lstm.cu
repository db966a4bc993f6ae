// LSTM gate kernels for the cupy backend, gates i, f, g, o (cuDNN/PyTorch order) in four
// H-wide blocks of each 4H row. One thread per (n, j) handles all four gates of unit j.
// The recurrent GEMM stays cuBLAS (one per step); everything elementwise is fused here.
#include "common.cuh"

// Forward step. gates: (N, 4H), in: xw_t, out: activated gates (kept for backward).
// rec: (N, 4H) = h_{t-1} @ Wh. c_prev, c, h: (N, H).
template <typename T>
__global__ void lstm_forward_step(T* __restrict__ gates, const T* __restrict__ rec,
                                  const T* __restrict__ c_prev, T* __restrict__ c,
                                  T* __restrict__ h, int N, int H) {
    GRID_STRIDE(k, (long long)N * H) {
        long long n = k / H, j = k % H;
        T* a = gates + n * 4 * H;
        const T* r = rec + n * 4 * H;
        T i = sigmoid_(a[j] + r[j]);
        T f = sigmoid_(a[H + j] + r[H + j]);
        T g = tanh_(a[2 * H + j] + r[2 * H + j]);
        T o = sigmoid_(a[3 * H + j] + r[3 * H + j]);
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = o;
        T c_new = f * c_prev[k] + i * g;
        c[k] = c_new;
        h[k] = o * tanh_(c_new);
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
        T* a = gates + n * 4 * H;
        T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        T dh_t = dh[k] + dhs_t[k];
        T tanh_c = tanh_(c[k]);
        T dc_t = dc[k] + dh_t * o * (T(1) - tanh_c * tanh_c);
        a[j] = dc_t * g * i * (T(1) - i);
        a[H + j] = dc_t * c_prev[k] * f * (T(1) - f);
        a[2 * H + j] = dc_t * i * (T(1) - g * g);
        a[3 * H + j] = dh_t * tanh_c * o * (T(1) - o);
        dc[k] = dc_t * f;
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
        T* a = gates + (long long)n * 4 * H;
        const T* r = rec + u * 4 * N + n;
        T i = sigmoid_(a[jj] + r[0]);
        T f = sigmoid_(a[H + jj] + r[N]);
        T g = tanh_(a[2 * H + jj] + r[2 * N]);
        T o = sigmoid_(a[3 * H + jj] + r[3 * N]);
        a[jj] = i;
        a[H + jj] = f;
        a[2 * H + jj] = g;
        a[3 * H + jj] = o;
        long long k = (long long)n * H + jj;
        T c_new = f * c_prev[k] + i * g;
        c[k] = c_new;
        h[k] = o * tanh_(c_new);
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
        T* a = gates + (long long)n * 4 * H;
        long long k = (long long)n * H + jj;
        T i = a[jj], f = a[H + jj], g = a[2 * H + jj], o = a[3 * H + jj];
        T dh_t = dh[u * N + n] + dhs_t[k];
        T tanh_c = tanh_(c[k]);
        T dc_t = dc[k] + dh_t * o * (T(1) - tanh_c * tanh_c);
        a[jj] = dc_t * g * i * (T(1) - i);
        a[H + jj] = dc_t * c_prev[k] * f * (T(1) - f);
        a[2 * H + jj] = dc_t * i * (T(1) - g * g);
        a[3 * H + jj] = dh_t * tanh_c * o * (T(1) - o);
        dc[k] = dc_t * f;
    }
}
