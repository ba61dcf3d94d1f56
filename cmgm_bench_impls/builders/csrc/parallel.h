// Work split over the kernels' pool (pool.h) as at::parallel_for splits it:
// contiguous chunks of the range, one per thread, at most one thread per
// `grain` items, run in the caller when one thread would do. The chunks are
// claimed, not assigned, so a worker that has not started delays nothing. The
// kernels take the thread count from their caller (torch's, read by the
// operator), not from the pool.
#pragma once

#include <algorithm>
#include <cstdint>

#include "pool.h"

namespace cmgm {

template <typename F>
void parallel_for(int64_t count, int64_t grain, int threads, const F& body) {
  if (count <= 0) return;
  const int64_t used = std::min<int64_t>(threads, (count + grain - 1) / grain);
  if (used <= 1) return body(int64_t{0}, count);
  run_ranges(count, used, threads, body);
}

}  // namespace cmgm
