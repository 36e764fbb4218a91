// Every kernel of npgru/kernels/gru.cu once, on the CPU emulator, built with ThreadSanitizer
// (tests/test_cuda_emulated.py::test_kernels_have_no_data_race). The numbers are not checked
// here (the Python tests do that); ThreadSanitizer reports any two threads that touch the same
// memory, one of them writing, with no barrier between them: a missing __syncthreads or grid
// barrier that luck might hide from the numeric tests. Built so, the emulator makes every
// CUDA thread an OS thread (ThreadSanitizer judges threads, not fibers): 2 blocks of 256, so
// 512 threads at once, which `ulimit -u` must allow.
//
//   g++ -std=c++20 -O1 -g -fsanitize=thread -pthread -I tests/emulator \
//       -DNPGRU_SOURCE='"npgru/kernels/gru.cu"' tests/emulator/race_check.cpp
#include "cuda_emulator.h"
#include NPGRU_SOURCE

#include <cstdio>
#include <random>
#include <vector>

namespace {

std::mt19937 generator(0);

template <typename T>
std::vector<T> normal(std::size_t n) {
    std::normal_distribution<double> draw(0.0, 0.3);
    std::vector<T> v(n);
    for (T& x : v) x = T(draw(generator));
    return v;
}

std::vector<long long> ids(std::size_t n, int below) {
    std::vector<long long> v(n);
    for (long long& x : v) x = generator() % below;
    return v;
}

// 2 blocks: they meet at the grid barrier, and with 4 tiles each block takes two; with the
// weights read from global memory (slab 0) and from each block's copy in shared memory
template <typename T, typename Forward, typename Backward>
void sequence(Forward forward, Backward backward, int B, int use_ids) {
    const int T_ = 3, H = 33, D = 6;
    for (int reset_after = 0; reset_after < 2; ++reset_after)
    for (int slab = 0; slab < 2; ++slab) {
        const std::size_t dynamic = slab ? 3 * H * 32 * sizeof(T) : 0;
        auto id = ids(T_ * B, D);  // read as the transposed view of (B, T) ids
        const int rows = use_ids ? D : T_ * B;
        auto XW_z = normal<T>(rows * H), XW_r = normal<T>(rows * H), XW_h = normal<T>(rows * H);
        auto b_z = normal<T>(H), b_r = normal<T>(H), b_h = normal<T>(H), b_hh = normal<T>(H);
        auto W_hz = normal<T>(H * H), W_hr = normal<T>(H * H), W_hh = normal<T>(H * H);
        auto H0 = normal<T>(B * H);
        std::vector<T> Hs((T_ + 1) * B * H), Z(T_ * B * H), R(Z.size()), H_tilde(Z.size()),
            RH(Z.size()), G(Z.size());
        emu::launch(2, 256, 256 * 1024, dynamic, [&] {
            forward(T_, B, H, D, reset_after, id.data(), 1, T_, use_ids, XW_z.data(), XW_r.data(),
                    XW_h.data(), b_z.data(), b_r.data(), b_h.data(), W_hz.data(), W_hr.data(),
                    W_hh.data(), b_hh.data(), H0.data(), Hs.data(), Z.data(), R.data(),
                    H_tilde.data(), RH.data(), G.data(), slab);
        });
        auto dHs = normal<T>(T_ * B * H), dH_last = normal<T>(B * H);
        auto W_hT = normal<T>(3 * H * H), W_hhT = normal<T>(H * H);
        std::vector<T> dA(T_ * B * 3 * H), dG(T_ * B * H), S(B * H), dH0(B * H);
        emu::launch(2, 256, 256 * 1024, dynamic, [&] {
            backward(T_, B, H, reset_after, dHs.data(), 1, dH_last.data(), 1, Hs.data(),
                     Z.data(), R.data(), H_tilde.data(), G.data(), W_hT.data(), W_hhT.data(),
                     dA.data(), dG.data(), S.data(), dH0.data(), slab);
        });
    }
}

// T 1 with H0 the last state of Hs itself (the state carried over in one workspace): the
// kernel writes H_1 over H0, so every read of H0 must come before a barrier
template <typename T, typename Forward>
void carried_state(Forward forward, int B) {
    const int H = 33, D = 6;
    for (int reset_after = 0; reset_after < 2; ++reset_after) {
        auto id = ids(B, D);
        auto XW_z = normal<T>(D * H), XW_r = normal<T>(D * H), XW_h = normal<T>(D * H);
        auto b_z = normal<T>(H), b_r = normal<T>(H), b_h = normal<T>(H), b_hh = normal<T>(H);
        auto W_hz = normal<T>(H * H), W_hr = normal<T>(H * H), W_hh = normal<T>(H * H);
        auto Hs = normal<T>(2 * B * H);
        std::vector<T> Z(B * H), R(Z.size()), H_tilde(Z.size()), RH(Z.size()), G(Z.size());
        emu::launch(2, 256, 256 * 1024, 0, [&] {
            forward(1, B, H, D, reset_after, id.data(), 1, 1, 1, XW_z.data(), XW_r.data(),
                    XW_h.data(), b_z.data(), b_r.data(), b_h.data(), W_hz.data(), W_hr.data(),
                    W_hh.data(), b_hh.data(), Hs.data() + B * H, Hs.data(), Z.data(), R.data(),
                    H_tilde.data(), RH.data(), G.data(), 0);
        });
    }
}

// D 40: three work items of 16 ids for each 32 columns, more than the 2 blocks
template <typename T, typename Kernel>
void token_grads(Kernel kernel) {
    const int T_ = 3, B = 5, H = 33, D = 40;
    auto id = ids(T_ * B, D);
    auto dA = normal<T>(T_ * B * 3 * H);
    std::vector<T> dW_xz(D * H), dW_xr(D * H), dW_xh(D * H), db_z(H), db_r(H), db_h(H);
    emu::launch(2, 256, 256 * 1024, 0, [&] {
        kernel(T_, B, H, D, id.data(), 1, T_, dA.data(), dW_xz.data(), dW_xr.data(),
               dW_xh.data(), db_z.data(), db_r.data(), db_h.data());
    });
}

template <typename T, typename Loss>
void loss(Loss kernel) {
    const int N = 70, V = 37;
    auto O = normal<T>(N * V);
    auto y = ids(N, V);
    std::vector<T> dO(N * V), rows(N), mean(1);
    emu::launch(2, 256, 256 * 1024, 0,
                [&] { kernel(N, V, O.data(), y.data(), dO.data(), rows.data(), mean.data()); });
}

}  // namespace

int main() {
    sequence<float>(gru_forward_f32_bt4, gru_backward_f32_bt4, 5, 1);
    sequence<float>(gru_forward_f32_bt8, gru_backward_f32_bt8, 9, 0);
    sequence<double>(gru_forward_f64_bt4, gru_backward_f64_bt4, 5, 0);
    sequence<double>(gru_forward_f64_bt8, gru_backward_f64_bt8, 9, 1);
    carried_state<float>(gru_forward_f32_bt4, 5);
    token_grads<float>(token_grads_f32);
    token_grads<double>(token_grads_f64);
    loss<float>(softmax_xent_f32);
    loss<double>(softmax_xent_f64);
    std::puts("every kernel ran");
}
