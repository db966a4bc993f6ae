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
