// Helpers shared by the kernels: one overload per precision, so each kernel is written
// once as a template and instantiated for float and double. The loader inlines this
// file in place of its #include, so CuPy's compile cache sees every change.
#pragma once

__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

// 1 / (1 + e^-x): e^-x overflows to inf for very negative x, which gives the right 0.
template <typename T>
__device__ __forceinline__ T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }

// Grid-stride loop: any launch size covers any problem size.
#define GRID_STRIDE(k, n) \
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < (long long)(n); \
         k += (long long)blockDim.x * gridDim.x)

#define WARP 32
#define DOT_ROWS 16  // rows of X whose partial sums a lane keeps in registers at once

// Dynamic shared memory as a T array (extern __shared__ cannot be declared per T); aligned
// for any T, whatever static shared data a kernel may add later.
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(T, name) \
    extern __shared__ __align__(16) unsigned char name##_raw[]; \
    T* name = reinterpret_cast<T*>(name##_raw)
#endif

// The sum over the warp, in every lane.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// One warp: out[c * N + n] = X[n, :] . w[c * col_stride : ... + K] for c < COLS, n < N, where
// X is (N, K) row-major. Lanes stride over k, so every load is coalesced; each X value is
// loaded once for all COLS columns; DOT_ROWS rows at a time keep the sums in registers.
// Lane 0 writes the results (shared memory, in practice); all lanes must call it.
template <typename T, int COLS>
__device__ void warp_dot(const T* __restrict__ X, const T* __restrict__ w, long long col_stride, int N, int K,
                         T* __restrict__ out) {
    int lane = threadIdx.x % WARP;
    for (int n0 = 0; n0 < N; n0 += DOT_ROWS) {
        T acc[COLS][DOT_ROWS];
#pragma unroll
        for (int c = 0; c < COLS; ++c)
#pragma unroll
            for (int r = 0; r < DOT_ROWS; ++r) acc[c][r] = T(0);
        for (int k = lane; k < K; k += WARP) {
            T wk[COLS];
#pragma unroll
            for (int c = 0; c < COLS; ++c) wk[c] = w[c * col_stride + k];
#pragma unroll
            for (int r = 0; r < DOT_ROWS; ++r) {
                if (n0 + r < N) {
                    T x = X[(long long)(n0 + r) * K + k];
#pragma unroll
                    for (int c = 0; c < COLS; ++c) acc[c][r] += x * wk[c];
                }
            }
        }
#pragma unroll
        for (int c = 0; c < COLS; ++c)
#pragma unroll
            for (int r = 0; r < DOT_ROWS; ++r) {
                T s = warp_sum(acc[c][r]);
                if (lane == 0 && n0 + r < N) out[c * N + n0 + r] = s;
            }
    }
}
