// Work split over the kernels' pool (pool.h) in contiguous ranges: one per
// thread at least (at most one thread per `grain` items; the caller alone when
// one thread would do), and up to kChunksPerThread per thread when the region
// holds that many chunks of kMinChunkWork multiply-adds. The chunks are
// claimed, not assigned: a worker that has not started delays nothing, and
// beside a busy neighbour the caller takes over the chunks of a worker that
// shares its core. The kernels take the thread count from their caller
// (torch's, read by the operator), not from the pool.
#pragma once

#include <algorithm>
#include <cstdint>

#include "pool.h"

namespace cmgm {

constexpr int64_t kChunksPerThread = 4;
constexpr double kMinChunkWork = 4e6;  // multiply-adds: ~0.1 ms of one core

template <typename F>
void parallel_for(int64_t count, int64_t grain, int threads, double work_per_item, const F& body) {
  if (count <= 0) return;
  const int64_t used = std::min<int64_t>(threads, (count + grain - 1) / grain);
  if (used <= 1) return body(int64_t{0}, count);
  const auto by_work = static_cast<int64_t>(static_cast<double>(count) * work_per_item / kMinChunkWork);
  run_ranges(count, std::clamp<int64_t>(by_work, used, std::min(kChunksPerThread * used, count)), threads, body);
}

}  // namespace cmgm
