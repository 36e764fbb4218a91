// A CPU stand-in for the few CUDA features npgru/kernels/gru.cu uses, so that the kernels
// run, slowly but exactly as written, on a machine without a GPU (tests/test_cuda_emulated.py).
//
// Every CUDA thread is a fiber (ucontext) with a 64 KiB stack, all of a launch's fibers on the
// one OS thread that launches it: a grid of any size costs no OS threads, and a cooperative
// kernel has all its blocks resident at once, as its grid barrier needs. A fiber runs until it
// waits at a barrier (__syncthreads, a warp's __shfl_xor_sync, a grid-wide sync); the others
// then run in turn, and a barrier passes when every thread it counts has arrived. A barrier
// that some thread never reaches is found when no fiber can run: the launch then ends the
// process with a message instead of hanging the test run.
//
// Built with ThreadSanitizer (race_check.cpp), every CUDA thread is an OS thread instead
// (small stacks, std::barrier): ThreadSanitizer judges real threads, and std::barrier gives the
// ordering CUDA's barriers give (what happens before an arrival is visible after the wait), so
// a kernel that reads what another thread wrote without a barrier in between is reported.
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

#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
#define NPGRU_EMULATOR_THREADS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NPGRU_EMULATOR_THREADS 1
#endif
#endif

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {

//: Stack of each emulated CUDA thread: the kernels keep a few scalars and small arrays there.
#ifdef NPGRU_EMULATOR_THREADS
constexpr std::size_t stack_bytes = 512 * 1024;  // ThreadSanitizer's own frames need more
#else
constexpr std::size_t stack_bytes = 64 * 1024;
#endif

[[noreturn]] inline void fail(const char* message) {
    std::fprintf(stderr, "emulator: %s\n", message);
    std::fflush(stderr);
    std::abort();
}

#ifdef NPGRU_EMULATOR_THREADS

using Barrier = std::barrier<>;
inline thread_local dim3 thread_index, block_index;
inline thread_local struct Block* block = nullptr;
inline thread_local std::size_t shared_used = 0;

#else

// One emulated CUDA thread: its stack, its context while it waits, and what it waits for.
struct Fiber {
    ucontext_t context;
    void* stack = nullptr;  // stack_bytes, above one guard page
    dim3 thread, block_index;
    struct Block* block = nullptr;
    std::size_t shared_used = 0;
    const struct Barrier* waiting = nullptr;
    unsigned long generation = 0;  // of `waiting` when this fiber arrived
    bool done = false;
};

inline ucontext_t scheduler;
inline Fiber* current = nullptr;
// the running fiber's registers, which the scheduler swaps in and out
inline dim3 thread_index, block_index;
inline struct Block* block = nullptr;
inline std::size_t shared_used = 0;

// A barrier of `count` fibers: the last to arrive opens it for the others and goes on.
struct Barrier {
    explicit Barrier(std::ptrdiff_t count) : count(static_cast<unsigned long>(count)) {}
    void arrive_and_wait() {
        if (++arrived == count) {
            arrived = 0;
            ++generation;
            return;
        }
        current->waiting = this;
        current->generation = generation;
        current->shared_used = shared_used;
        swapcontext(&current->context, &scheduler);
    }
    bool open_for(const Fiber& f) const { return generation != f.generation; }
    unsigned long count, arrived = 0, generation = 0;
};

#endif

struct Block {
    Block(unsigned threads, std::size_t shared_bytes, std::size_t dynamic_doubles)
        : sync(threads), exchange(threads), shared(shared_bytes), dynamic(dynamic_doubles) {
        for (unsigned w = 0; w < threads / 32; ++w) warps.emplace_back(new Barrier(32));
    }
    Barrier sync;
    std::vector<std::unique_ptr<Barrier>> warps;
    std::vector<double> exchange;        // one slot per thread, for the warp shuffles
    std::vector<unsigned char> shared;   // the block's shared memory
    std::vector<double> dynamic;         // its dynamic shared memory (doubles: aligned for any T)
};

inline Barrier* grid_barrier = nullptr;

// Shared memory is handed out in the order the kernel declares it; every thread of a block
// declares the same arrays in the same order, so they all receive the same addresses.
template <typename T>
T* shared_array(std::size_t n) {
    std::size_t start = (shared_used + alignof(double) - 1) / alignof(double) * alignof(double);
    shared_used = start + n * sizeof(T);
    if (shared_used > block->shared.size()) fail("shared memory exhausted");
    return reinterpret_cast<T*>(block->shared.data() + start);
}

}  // namespace emu

#define threadIdx (emu::thread_index)
#define blockIdx (emu::block_index)
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

// What a launch runs as each CUDA thread, and where that thread's declared shared memory ends.
struct Thread {
    dim3 thread, block_index;
    Block* block;
    std::size_t shared_used = 0;
};

#ifdef NPGRU_EMULATOR_THREADS

inline void* run_thread(void* arg) {
    auto* job = static_cast<std::pair<Thread*, const std::function<void()>*>*>(arg);
    thread_index = job->first->thread;
    block_index = job->first->block_index;
    block = job->first->block;
    shared_used = 0;
    (*job->second)();
    job->first->shared_used = shared_used;
    return nullptr;
}

// Every thread of the grid at once, each an OS thread with a small stack.
inline void run(std::vector<Thread>& threads, const std::function<void()>& body) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, stack_bytes);
    std::vector<std::pair<Thread*, const std::function<void()>*>> jobs;
    for (Thread& t : threads) jobs.emplace_back(&t, &body);
    std::vector<pthread_t> running(threads.size());
    for (std::size_t i = 0; i < threads.size(); ++i)
        if (pthread_create(&running[i], &attr, run_thread, &jobs[i]) != 0) {
            std::fprintf(stderr, "emulator: cannot start thread %zu of %zu\n", i + 1,
                         threads.size());
            fail("too few threads allowed (ulimit -u?) to run this grid with ThreadSanitizer");
        }
    for (pthread_t& t : running) pthread_join(t, nullptr);
    pthread_attr_destroy(&attr);
}

#else

inline const std::function<void()>* fiber_body = nullptr;

inline void fiber_main() {
    (*fiber_body)();
    current->shared_used = shared_used;
    current->done = true;  // then uc_link returns to the scheduler
}

// Every thread of the grid as a fiber on this OS thread, run in turn until all are done.
// Stacks of finished launches, for the next: mapping and faulting in fresh ones each launch
// would cost more than the kernels.
inline std::vector<void*> spare_stacks;

inline void run(std::vector<Thread>& threads, const std::function<void()>& body) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    std::vector<Fiber> fibers(threads.size());
    fiber_body = &body;
    for (std::size_t i = 0; i < threads.size(); ++i) {
        Fiber& f = fibers[i];
        f.thread = threads[i].thread;
        f.block_index = threads[i].block_index;
        f.block = threads[i].block;
        if (!spare_stacks.empty()) {
            f.stack = spare_stacks.back();
            spare_stacks.pop_back();
        } else {
            // a guard page below the stack: an overflow faults, not corrupts a neighbour
            f.stack = mmap(nullptr, page + stack_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (f.stack == MAP_FAILED) fail("no memory for the stacks of this grid");
            mprotect(f.stack, page, PROT_NONE);
        }
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = static_cast<char*>(f.stack) + page;
        f.context.uc_stack.ss_size = stack_bytes;
        f.context.uc_link = &scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    for (std::size_t left = fibers.size(); left > 0;) {
        bool ran = false;
        for (Fiber& f : fibers) {
            if (f.done || (f.waiting != nullptr && !f.waiting->open_for(f))) continue;
            f.waiting = nullptr;
            current = &f;
            thread_index = f.thread;
            block_index = f.block_index;
            block = f.block;
            shared_used = f.shared_used;
            swapcontext(&scheduler, &f.context);
            left -= f.done;
            ran = true;
        }
        if (!ran && left > 0) fail("every thread waits at a barrier that some never reach");
    }
    for (std::size_t i = 0; i < fibers.size(); ++i) {
        threads[i].shared_used = fibers[i].shared_used;
        spare_stacks.push_back(fibers[i].stack);
    }
    current = nullptr;
}

#endif

// Runs body() as every thread of a grid of `grid` blocks of `threads` threads, each block with
// `shared_bytes` for its shared arrays and `dynamic_bytes` of dynamic shared memory; returns
// the most bytes of shared arrays a block declared. A launch that has not finished after
// `limit` seconds (a kernel that loops forever) ends the process with a message instead of
// hanging the test run.
inline std::size_t launch(unsigned grid, unsigned threads, std::size_t shared_bytes,
                          std::size_t dynamic_bytes, const std::function<void()>& body,
                          int limit = 120) {
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{threads, 1, 1};
    Barrier all(static_cast<std::ptrdiff_t>(grid * threads));
    grid_barrier = &all;
    std::vector<std::unique_ptr<Block>> blocks;
    const std::size_t dynamic_doubles = (dynamic_bytes + sizeof(double) - 1) / sizeof(double);
    for (unsigned b = 0; b < grid; ++b)
        blocks.emplace_back(new Block(threads, shared_bytes, dynamic_doubles));
    std::vector<Thread> all_threads;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < threads; ++t)
            all_threads.push_back(Thread{dim3{t, 0, 0}, dim3{b, 0, 0}, blocks[b].get()});
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
    std::thread watchdog([&] {
        std::unique_lock<std::mutex> lock(mutex);
        if (!finished.wait_for(lock, std::chrono::seconds(limit), [&] { return done; }))
            fail("a kernel ran too long: an endless loop?");
    });
    run(all_threads, body);
    {
        std::lock_guard<std::mutex> lock(mutex);
        done = true;
    }
    finished.notify_one();
    watchdog.join();
    grid_barrier = nullptr;
    std::size_t most = 0;
    for (const Thread& t : all_threads) most = std::max(most, t.shared_used);
    return most;
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
