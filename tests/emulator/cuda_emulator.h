// A CPU stand-in for the few CUDA features npgru/kernels/gru.cu uses, so that the kernels
// run, slowly but exactly as written, on a machine without a GPU (tests/test_cuda_emulated.py).
//
// Every CUDA thread is a std::thread. __syncthreads is a barrier of the block's threads, a
// grid-wide sync a barrier of all of them, __shfl_xor_sync an exchange through memory between
// two barriers of the warp. The barriers also give the memory ordering CUDA's give (C++20
// std::barrier: what happens before an arrival is visible after the wait), so a kernel that
// reads what another thread wrote without a barrier in between is a data race here too: it
// may give wrong numbers, and ThreadSanitizer reports it for certain (race_check.cpp).
//
// What this cannot show: speed, register and shared-memory limits, and the GPU's weaker
// caching rules (__ldg / __ldcg are plain loads here). tests/test_cupy.py covers those on a GPU.
#pragma once

#include <algorithm>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {

struct Block {
    Block(unsigned threads, std::size_t shared_bytes, std::size_t dynamic_bytes)
        : sync(threads), exchange(threads), shared(shared_bytes), dynamic(dynamic_bytes) {
        for (unsigned w = 0; w < threads / 32; ++w) warps.emplace_back(new std::barrier<>(32));
    }
    std::barrier<> sync;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<double> exchange;        // one slot per thread, for the warp shuffles
    std::vector<unsigned char> shared;   // the block's shared memory
    std::vector<double> dynamic;         // its dynamic shared memory (doubles: aligned for any T)
};

inline std::barrier<>* grid_barrier = nullptr;
inline thread_local Block* block = nullptr;
inline thread_local std::size_t shared_used = 0;

// Shared memory is handed out in the order the kernel declares it; every thread of a block
// declares the same arrays in the same order, so they all receive the same addresses.
template <typename T>
T* shared_array(std::size_t n) {
    std::size_t start = (shared_used + alignof(double) - 1) / alignof(double) * alignof(double);
    shared_used = start + n * sizeof(T);
    if (shared_used > block->shared.size()) {
        std::fprintf(stderr, "emulator: shared memory exhausted\n");
        std::abort();
    }
    return reinterpret_cast<T*>(block->shared.data() + start);
}

}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define NPGRU_SHARED_ARRAY(T, name, n) T* name = emu::shared_array<T>(n)
#define NPGRU_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::block->dynamic.data())

inline void __syncthreads() { emu::block->sync.arrive_and_wait(); }

template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, sizeof d);
    return d;
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    emu::Block& b = *emu::block;
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T* slots = reinterpret_cast<T*>(b.exchange.data() + warp * 32);
    slots[lane] = v;
    b.warps[warp]->arrive_and_wait();
    const T got = slots[lane ^ lane_mask];
    b.warps[warp]->arrive_and_wait();  // nobody overwrites a slot before it has been read
    return got;
}

using std::fmax;
using std::min;

namespace emu {

// Runs body() as every thread of a grid of `grid` blocks of `threads` threads, each block with
// `shared_bytes` for its shared arrays and `dynamic_bytes` of dynamic shared memory. A launch
// that has not finished after `limit` seconds (a barrier that some thread never reaches) ends
// the process with a message instead of hanging the test run.
inline void launch(unsigned grid, unsigned threads, std::size_t shared_bytes,
                   std::size_t dynamic_bytes, const std::function<void()>& body, int limit = 120) {
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{threads, 1, 1};
    std::barrier<> all(static_cast<std::ptrdiff_t>(grid * threads));
    grid_barrier = &all;
    std::vector<std::unique_ptr<Block>> blocks;
    const std::size_t dynamic_doubles = (dynamic_bytes + sizeof(double) - 1) / sizeof(double);
    for (unsigned b = 0; b < grid; ++b)
        blocks.emplace_back(new Block(threads, shared_bytes, dynamic_doubles));
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
    std::thread watchdog([&] {
        std::unique_lock<std::mutex> lock(mutex);
        if (!finished.wait_for(lock, std::chrono::seconds(limit), [&] { return done; })) {
            std::fprintf(stderr, "emulator: a kernel ran for %d s: deadlocked at a barrier?\n",
                         limit);
            std::abort();
        }
    });
    std::vector<std::thread> running;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < threads; ++t)
            running.emplace_back([&, b, t] {
                threadIdx = dim3{t, 0, 0};
                blockIdx = dim3{b, 0, 0};
                block = blocks[b].get();
                shared_used = 0;
                body();
            });
    for (std::thread& thread : running) thread.join();
    {
        std::lock_guard<std::mutex> lock(mutex);
        done = true;
    }
    finished.notify_one();
    watchdog.join();
    grid_barrier = nullptr;
}

// A kernel called with its arguments given as cuLaunchKernel takes them: args[i] points to
// the value of parameter i.
template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

template <typename... A>
std::function<void(void**)> entry(void (*kernel)(A...)) {
    return [kernel](void** args) { call(kernel, args, std::index_sequence_for<A...>{}); };
}

}  // namespace emu
