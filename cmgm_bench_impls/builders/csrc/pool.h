// The kernels' own pool of worker threads, built so that a call never waits
// for a worker that has not started: a region's work is cut into chunks that
// threads claim one at a time, and the caller claims too. A worker that is
// asleep (the machine was idle) or descheduled (a neighbour holds its core)
// when a region starts claims nothing, and the caller runs the chunks it left.
// The caller waits only for chunks a worker has claimed and not finished.
// Workers spin briefly after their last chunk, then sleep on a condition
// variable; one woken from sleep first leaves the CPU of the thread that woke
// it, where the scheduler puts it, for another of the process's CPUs. ATen
// operators called inside a chunk run on one thread (OpenMP's and MKL's
// per-thread settings), so no region opens a libgomp team of its own.
#pragma once

#include <cstdint>
#include <functional>

namespace cmgm {

// Runs body(chunk) for every chunk in [0, chunks) on up to `threads` threads:
// the caller and threads - 1 workers of one process-wide pool. Returns when
// every chunk has run; the first exception a chunk threw is rethrown here.
// A call made inside a chunk, or while another thread's call is running, runs
// its chunks on the calling thread.
void run_chunks(int64_t chunks, int threads, const std::function<void(int64_t chunk)>& body);

// Runs body(begin, end) over [0, count) in `parts` contiguous ranges of
// (nearly) equal size through run_chunks.
void run_ranges(int64_t count, int64_t parts, int threads, const std::function<void(int64_t begin, int64_t end)>& body);

// True on the pool's worker threads.
bool on_pool_worker();

// The CPU the calling thread runs on; -1 where the system does not say.
int current_cpu();

// For a short call (about a millisecond on one core): true when it may use `threads` threads, that
// is when no worker of their pool sleeps. A worker woken from sleep arrives milliseconds later, after
// such a call ends, so the call runs on its caller alone; when short calls come in a burst (each
// within kBurst of the one before), the sleeping workers are woken for the calls that follow.
bool short_call_threads_ready(int threads);

// For tests: while held, workers claim no chunk (as if descheduled), so the
// caller must run every chunk itself.
void hold_workers(bool held);

// While alive, ATen, OpenMP and MKL run single-threaded on the calling thread
// (as they do on the pool's workers); the thread's previous settings come back
// at the end of the scope.
class SingleThreadedLibraries {
 public:
  SingleThreadedLibraries();
  ~SingleThreadedLibraries();
  SingleThreadedLibraries(const SingleThreadedLibraries&) = delete;
  SingleThreadedLibraries& operator=(const SingleThreadedLibraries&) = delete;

 private:
  int omp_threads_;
  int mkl_threads_;
};

}  // namespace cmgm
