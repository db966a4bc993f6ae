// The rest of a training step on the GPU: embedding backward and softmax + cross-entropy.
#include "common.cuh"

// dW[ids[m], :] += dout[m, :], dW (V, D). Repeated ids collide, so the adds are atomic
// (cupy.scatter_add, which the book used, no longer exists). An id outside [0, V) is
// SKIPPED (its row adds nothing): the layers check ids, but not under trusted_ids(), and an
// atomicAdd out of bounds would leave the CUDA context unusable.
template <typename T>
__global__ void embedding_scatter_add(T* __restrict__ dW, const int* __restrict__ ids,
                                      const T* __restrict__ dout, long long M, int D, long long V) {
    GRID_STRIDE(k, M * D) {
        long long m = k / D, d = k % D;
        long long id = ids[m];
        if (id >= 0 && id < V) atomicAdd(dW + id * D + d, dout[k]);
    }
}

// One block of SOFTMAX_THREADS threads per row. Each row's softmax, its loss
// -log p[label] / count and its gradient (p - onehot) / count in one kernel; rows with
// label -1 are skipped (zero loss, zero gradient), and so are rows whose label lies outside
// [-1, V) (possible only under trusted_ids(); indexing with it would read and write out of
// bounds). count = number of labels in [0, V) (the caller counts them so).
#define SOFTMAX_THREADS 256

template <typename T>
__device__ T block_reduce(T* buf, T value, bool take_max) {
    buf[threadIdx.x] = value;
    __syncthreads();
    for (int half = SOFTMAX_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            T other = buf[threadIdx.x + half];
            buf[threadIdx.x] = take_max ? max(buf[threadIdx.x], other) : buf[threadIdx.x] + other;
        }
        __syncthreads();
    }
    T result = buf[0];
    __syncthreads();  // buf is reused by the next reduction
    return result;
}

template <typename T>
__global__ void softmax_cross_entropy(const T* __restrict__ scores, const int* __restrict__ labels,
                                      const int* __restrict__ count, T* __restrict__ dscores,
                                      T* __restrict__ row_loss, int V) {
    __shared__ T buf[SOFTMAX_THREADS];
    long long row = blockIdx.x;
    const T* s = scores + row * V;
    T* d = dscores + row * V;
    int label = labels[row];
    if (label < 0 || label >= V) {
        for (int v = threadIdx.x; v < V; v += SOFTMAX_THREADS) d[v] = T(0);
        if (threadIdx.x == 0) row_loss[row] = T(0);
        return;
    }
    T top = s[0];  // any element of the row is a valid start for the max
    for (int v = threadIdx.x; v < V; v += SOFTMAX_THREADS) top = max(top, s[v]);
    top = block_reduce(buf, top, true);
    T total = T(0);
    for (int v = threadIdx.x; v < V; v += SOFTMAX_THREADS) {
        T e = exp_(s[v] - top);
        d[v] = e;
        total += e;
    }
    total = block_reduce(buf, total, false);
    T scale = T(1) / T(max(*count, 1));
    T inv = scale / total;
    for (int v = threadIdx.x; v < V; v += SOFTMAX_THREADS) d[v] *= inv;
    __syncthreads();  // the label's entry is written by one thread below
    if (threadIdx.x == 0) {
        d[label] -= scale;
        row_loss[row] = (log_(total) - (s[label] - top)) * scale;
    }
}

// In place: uniform draws u -> the inverted-dropout mask (u >= ratio) * scale.
template <typename T>
__global__ void keep_mask(T* __restrict__ u, T ratio, T scale, long long size) {
    GRID_STRIDE(k, size) { u[k] = u[k] >= ratio ? scale : T(0); }
}

// y += alpha * x, in place and without a temporary (the SGD step: alpha = -lr).
template <typename T>
__global__ void axpy(T* __restrict__ y, const T* __restrict__ x, T alpha, long long size) {
    GRID_STRIDE(k, size) { y[k] += alpha * x[k]; }
}
