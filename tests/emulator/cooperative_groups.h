// The grid group of CUDA's cooperative groups, for the CPU emulator (cuda_emulator.h).
#pragma once

namespace cooperative_groups {

struct grid_group {
    void sync() const { emu::grid_barrier->arrive_and_wait(); }
};

inline grid_group this_grid() { return {}; }

}  // namespace cooperative_groups
