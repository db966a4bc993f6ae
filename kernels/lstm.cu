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
