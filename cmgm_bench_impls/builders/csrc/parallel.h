// Work split over OpenMP threads as at::parallel_for splits it (OpenMP backend):
// contiguous chunks of the range, one per thread, at most one thread per
// `grain` items, run in the caller when one thread would do. The kernels take
// the thread count from their caller (torch's, at::get_num_threads()) instead
// of OpenMP's per-thread default, which a thread that torch did not start does
// not share. The process has one OpenMP runtime: torch's libgomp.so.1.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace cmgm {

template <typename F>
void parallel_for(int64_t count, int64_t grain, int threads, const F& body) {
  if (count <= 0) return;
  const int64_t used = std::min<int64_t>(threads, (count + grain - 1) / grain);
  if (used <= 1 || omp_in_parallel()) return body(int64_t{0}, count);
  const int64_t chunk = (count + used - 1) / used;
#pragma omp parallel num_threads(static_cast<int>(used))
  {
    const int64_t begin = omp_get_thread_num() * chunk;
    if (begin < count) body(begin, std::min(count, begin + chunk));
  }
}

}  // namespace cmgm
