// Runs CUDA C kernels on the CPU for tests: each block in turn, each thread of a block as
// a std::thread when the kernel synchronizes (else one after another). Enough of CUDA
// for rnncore's kernels: thread indices, __shared__ (one static copy, as blocks run one at
// a time), __syncthreads, atomicAdd and the math functions.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
inline dim3 grid_dim, block_dim, block_idx;
inline thread_local dim3 thread_idx;
inline std::barrier<>* block_barrier = nullptr;
}  // namespace emu

#define gridDim emu::grid_dim
#define blockDim emu::block_dim
#define blockIdx emu::block_idx
#define threadIdx emu::thread_idx
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
using std::max;
using std::min;

template <typename T>
T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

namespace emu {
template <typename... P, std::size_t... I>
void invoke(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}

template <typename... P>
void launch(void (*kernel)(P...), const unsigned* grid, const unsigned* block, void** args,
            bool threaded) {
    grid_dim = {grid[0], grid[1], grid[2]};
    block_dim = {block[0], block[1], block[2]};
    auto run = [=](unsigned x, unsigned y, unsigned z) {
        thread_idx = {x, y, z};
        invoke(kernel, args, std::index_sequence_for<P...>{});
    };
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                block_idx = {bx, by, bz};
                if (!threaded) {
                    for (unsigned z = 0; z < block[2]; ++z)
                        for (unsigned y = 0; y < block[1]; ++y)
                            for (unsigned x = 0; x < block[0]; ++x) run(x, y, z);
                    continue;
                }
                std::barrier<> barrier(block[0] * block[1] * block[2]);
                block_barrier = &barrier;
                std::vector<std::thread> threads;
                for (unsigned z = 0; z < block[2]; ++z)
                    for (unsigned y = 0; y < block[1]; ++y)
                        for (unsigned x = 0; x < block[0]; ++x)
                            threads.emplace_back([=, &barrier] {
                                run(x, y, z);
                                barrier.arrive_and_drop();  // an exited thread no longer holds others
                            });
                for (auto& t : threads) t.join();
            }
}
}  // namespace emu
