// Runs CUDA C kernels on the CPU for tests. Enough of CUDA for rnncore's kernels: thread
// indices, __shared__, __syncthreads, grid-wide sync, atomicAdd and the math functions.
//
// A kernel that never synchronizes runs its threads one after another. One that does runs
// every CUDA thread as a fiber (ucontext) on this one OS thread: a fiber runs until it
// reaches a barrier, and a barrier opens once every live thread of its block (of its grid,
// for a grid sync) waits at one. That is a schedule a GPU may also choose, so a kernel
// that needs a barrier it lacks, or deadlocks, fails here too. __shared__ variables are
// static: correct while only one block is live, which holds unless the kernel syncs the
// grid (then emu::launch refuses kernels that also use __shared__ across blocks... see
// cooperative below).
#pragma once
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
inline dim3 grid_dim, block_dim, block_idx, thread_idx;

enum State { RUNNABLE, AT_WARP_BARRIER, AT_BLOCK_BARRIER, AT_GRID_BARRIER, DONE };
// A fiber starts once through makecontext/setcontext; every later switch is a
// _setjmp/_longjmp pair, which (unlike swapcontext) makes no system call.
struct Fiber {
    ucontext_t start;
    jmp_buf resume;
    bool started;
    char* stack;
    dim3 block, thread;
    unsigned block_rank, first_of_block, rank_in_block, warp_id;
    State state;
    double exchange;  // what this lane offers in a warp shuffle
};
constexpr std::size_t STACK_BYTES = 64 * 1024;
inline jmp_buf scheduler;
inline std::vector<Fiber> fibers;
inline std::vector<std::unique_ptr<char[]>> stacks;  // reused across launches
inline Fiber* current = nullptr;
inline std::function<void()> body;
inline std::vector<std::vector<unsigned char>> block_shared;  // dynamic shared memory, one per live block
inline unsigned char* shared_now = nullptr;
// Dynamic shared memory starts as all-ones bytes: NaN as float and as double, so a read of
// shared memory no thread wrote poisons the result (0xA5 read as about -3e-16: as good as 0).
constexpr unsigned char POISON = 0xFF;

inline void wait(State barrier) {
    if (current == nullptr) {  // a synchronizing call in the sequential path
        std::fprintf(stderr, "emu: barrier reached in a kernel run without fibers\n");
        std::abort();
    }
    current->state = barrier;
    if (!_setjmp(current->resume)) _longjmp(scheduler, 1);
}

inline void fiber_entry() {
    body();
    current->state = DONE;
    _longjmp(scheduler, 1);
}

inline void resume(Fiber& f) {
    if (_setjmp(scheduler)) return;  // back from the fiber: it waits at a barrier or is done
    if (!f.started) {
        f.started = true;
        setcontext(&f.start);
    }
    _longjmp(f.resume, 1);
}
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
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::shared_now)

inline void __syncthreads() { emu::wait(emu::AT_BLOCK_BARRIER); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::AT_WARP_BARRIER); }

// Every lane of the warp offers its value, waits for the whole warp, reads its partner's,
// and waits again before anyone offers the next value: __shfl_xor_sync's contract.
template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
    emu::Fiber* me = emu::current;
    me->exchange = static_cast<double>(value);
    emu::wait(emu::AT_WARP_BARRIER);
    unsigned partner = (me->rank_in_block & ~31u) | ((me->rank_in_block & 31u) ^ unsigned(lane_mask));
    T got = static_cast<T>(emu::fibers[me->first_of_block + partner].exchange);
    emu::wait(emu::AT_WARP_BARRIER);
    return got;
}
inline void emu_grid_sync() { emu::wait(emu::AT_GRID_BARRIER); }
using std::max;
using std::min;

template <typename T>
T atomicAdd(T* address, T value) {  // one OS thread: a plain add is atomic
    T old = *address;
    *address = old + value;
    return old;
}

namespace emu {
template <typename... P, std::size_t... I>
void invoke(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}

inline void set_indices(const Fiber& f) {
    block_idx = f.block;
    thread_idx = f.thread;
    shared_now = block_shared[block_shared.size() == 1 ? 0 : f.block_rank].data();
}

// Resume runnable fibers until every one is done; open barriers as they fill.
inline void schedule(unsigned blocks) {
    for (;;) {
        bool ran = false;
        for (auto& f : fibers) {
            if (f.state != RUNNABLE) continue;
            current = &f;
            set_indices(f);
            resume(f);
            ran = true;
        }
        current = nullptr;
        std::vector<int> live(blocks, 0), waiting(blocks, 0);
        std::vector<int> warp_live(fibers.size() + 1, 0), warp_waiting(fibers.size() + 1, 0);
        int live_all = 0, at_grid = 0;
        auto warp_of = [](const Fiber& f) { return f.warp_id; };
        for (auto& f : fibers) {
            if (f.state == DONE) continue;
            ++live[f.block_rank];
            ++live_all;
            ++warp_live[warp_of(f)];
            waiting[f.block_rank] += f.state == AT_BLOCK_BARRIER;
            warp_waiting[warp_of(f)] += f.state == AT_WARP_BARRIER;
            at_grid += f.state == AT_GRID_BARRIER;
        }
        if (live_all == 0) return;
        bool opened = false;
        for (auto& f : fibers) {
            if (f.state == AT_WARP_BARRIER && warp_waiting[warp_of(f)] == warp_live[warp_of(f)]) f.state = RUNNABLE, opened = true;
            if (f.state == AT_BLOCK_BARRIER && waiting[f.block_rank] == live[f.block_rank]) f.state = RUNNABLE, opened = true;
            if (f.state == AT_GRID_BARRIER && at_grid == live_all) f.state = RUNNABLE, opened = true;
        }
        if (!opened && !ran) {
            std::fprintf(stderr, "emu: deadlock: threads wait at barriers that can never open\n");
            std::abort();
        }
    }
}

// cooperative: all blocks live at once (grid sync); otherwise one block at a time.
template <typename... P>
void launch(void (*kernel)(P...), const unsigned* grid, const unsigned* block, void** args, bool synchronizes,
            bool cooperative, unsigned shared_bytes) {
    grid_dim = {grid[0], grid[1], grid[2]};
    block_dim = {block[0], block[1], block[2]};
    unsigned blocks = grid[0] * grid[1] * grid[2], threads = block[0] * block[1] * block[2];
    auto run_one = [&] { invoke(kernel, args, std::index_sequence_for<P...>{}); };
    auto each_block = [&](auto&& fn) {
        unsigned rank = 0;
        for (unsigned bz = 0; bz < grid[2]; ++bz)
            for (unsigned by = 0; by < grid[1]; ++by)
                for (unsigned bx = 0; bx < grid[0]; ++bx) fn(dim3{bx, by, bz}, rank++);
    };
    auto each_thread = [&](auto&& fn) {
        for (unsigned z = 0; z < block[2]; ++z)
            for (unsigned y = 0; y < block[1]; ++y)
                for (unsigned x = 0; x < block[0]; ++x) fn(dim3{x, y, z});
    };
    // Poisoned, not zeroed: a kernel that reads shared memory it never wrote should fail here too.
    block_shared.assign(cooperative ? blocks : 1, std::vector<unsigned char>(shared_bytes + 16, POISON));
    shared_now = block_shared[0].data();
    if (!synchronizes) {
        each_block([&](dim3 b, unsigned) {
            block_idx = b;
            each_thread([&](dim3 t) {
                thread_idx = t;
                run_one();
            });
        });
        return;
    }
    body = run_one;
    auto make_fibers = [&](dim3 b, unsigned rank) {
        unsigned first = fibers.size(), k = 0, warps_per_block = (threads + 31) / 32;
        each_thread([&](dim3 t) {
            fibers.emplace_back();
            Fiber& f = fibers.back();
            f.block = b, f.thread = t, f.block_rank = rank, f.state = RUNNABLE;
            f.first_of_block = first, f.rank_in_block = k;
            f.warp_id = rank * warps_per_block + k++ / 32;  // warp ids < fibers.size() + 1
        });
    };
    auto start_fibers = [&] {
        while (stacks.size() < fibers.size()) stacks.emplace_back(new char[STACK_BYTES]);
        for (std::size_t k = 0; k < fibers.size(); ++k) {
            Fiber& f = fibers[k];
            f.started = false;
            f.stack = stacks[k].get();
            getcontext(&f.start);
            f.start.uc_stack.ss_sp = f.stack;
            f.start.uc_stack.ss_size = STACK_BYTES;
            f.start.uc_link = nullptr;
            makecontext(&f.start, fiber_entry, 0);
        }
    };
    if (cooperative) {
        fibers.clear();
        fibers.reserve(std::size_t(blocks) * threads);
        each_block(make_fibers);
        start_fibers();
        schedule(blocks);
    } else {
        each_block([&](dim3 b, unsigned) {
            std::fill(block_shared[0].begin(), block_shared[0].end(), POISON);
            fibers.clear();
            fibers.reserve(threads);
            make_fibers(b, 0);
            start_fibers();
            schedule(1);
        });
    }
    fibers.clear();
}
}  // namespace emu
