// tanh-RNN step kernels for the cupy backend. The recurrent product h_{t-1} @ Wh (and
// dxw_t @ Wh^T in backward) is one cuBLAS GEMM per step; these kernels fuse everything
// elementwise around it. Arrays are row-major (N, H) blocks of the time-major buffers.
#include "common.cuh"

// h_t = tanh(xw_t + rec), written over xw_t (which becomes hs[t]).
template <typename T>
__global__ void rnn_forward_step(T* __restrict__ xw_t, const T* __restrict__ rec, long long size) {
    GRID_STRIDE(k, size) { xw_t[k] = tanh_(xw_t[k] + rec[k]); }
}

// dxw_t = (dh + dhs_t) * (1 - h_t^2); the caller then sets dh = dxw_t @ Wh^T.
template <typename T>
__global__ void rnn_backward_step(T* __restrict__ dxw_t, const T* __restrict__ dh,
                                  const T* __restrict__ dhs_t, const T* __restrict__ h_t,
                                  long long size) {
    GRID_STRIDE(k, size) {
        T h = h_t[k];
        dxw_t[k] = (dh[k] + dhs_t[k]) * (T(1) - h * h);
    }
}
