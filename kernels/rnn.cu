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

// ---- fused steps: the recurrent product and the tanh in one launch, no cuBLAS ----------
// A block of W warps owns W hidden units, one per warp. Phase 1: the warp's unit column of
// the recurrent product, for all N rows, into shared memory. Phase 2: the block's threads
// apply the elementwise part. Each step reads only the previous step's output, which the
// previous launch finished, so the loop needs no grid-wide synchronization.

// h_t = tanh(xw_t + h_prev @ Wh), over xw_t. WhT = Wh^T, (H, H) row-major.
template <typename T>
__global__ void rnn_step_forward(T* __restrict__ xw_t, const T* __restrict__ WhT, const T* __restrict__ h_prev,
                                 int N, int H) {
    DYNAMIC_SHARED(T, rec);  // [warps][N]
    int warp = threadIdx.x / WARP, warps = blockDim.x / WARP, j0 = blockIdx.x * warps;
    if (j0 + warp < H) warp_dot<T, 1>(h_prev, WhT + (long long)(j0 + warp) * H, 0, N, H, rec + warp * N);
    __syncthreads();
    for (int idx = threadIdx.x; idx < warps * N; idx += blockDim.x) {
        int u = idx / N, n = idx % N;
        if (j0 + u >= H) continue;
        long long k = (long long)n * H + j0 + u;
        xw_t[k] = tanh_(xw_t[k] + rec[u * N + n]);
    }
}

// dxw_t = (dh + dhs_t) * (1 - h_t^2), with dh = next @ Wh^T where next = dxw_{t+1}
// (next_is_dz = 1), or dh = next itself, the gradient at h_T (next_is_dz = 0).
template <typename T>
__global__ void rnn_step_backward(T* __restrict__ dxw_t, const T* __restrict__ next, int next_is_dz,
                                  const T* __restrict__ Wh, const T* __restrict__ dhs_t, const T* __restrict__ h_t,
                                  int N, int H) {
    DYNAMIC_SHARED(T, dh);  // [warps][N]
    int warp = threadIdx.x / WARP, warps = blockDim.x / WARP, j0 = blockIdx.x * warps;
    int j = j0 + warp;
    if (j < H) {
        if (next_is_dz) {
            warp_dot<T, 1>(next, Wh + (long long)j * H, 0, N, H, dh + warp * N);
        } else {
            for (int n = threadIdx.x % WARP; n < N; n += WARP) dh[warp * N + n] = next[(long long)n * H + j];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < warps * N; idx += blockDim.x) {
        int u = idx / N, n = idx % N;
        if (j0 + u >= H) continue;
        long long k = (long long)n * H + j0 + u;
        T h = h_t[k];
        dxw_t[k] = (dh[u * N + n] + dhs_t[k]) * (T(1) - h * h);
    }
}

// out[n, j] = X[n, :] . W[j, :] for every j < J: X (N, K), W (J, K), one warp per j.
// (The gradient reaching h0 after the backward loop: dxw_0 @ Wh^T.)
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
