// The kernels' pool (pool.h). One word holds a region's state: its generation
// (32 bits), the number of its chunks and the next unclaimed chunk (16 bits
// each), so a claim is one compare-and-swap that fails if the region it was
// read from has ended. A region's body is read only after a successful claim,
// while its caller is still waiting for that chunk.
#include "pool.h"

#include <omp.h>
#include <sched.h>
#include <torch/csrc/stable/c/shim.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CMGM_SPIN_PAUSE() _mm_pause()
#else
#define CMGM_SPIN_PAUSE() std::this_thread::yield()
#endif

// MKL's per-thread thread count (its C entry point, which takes the count by value; the
// lower-case name is the Fortran one, by pointer); present in torch's builds with MKL, null elsewhere.
extern "C" __attribute__((weak)) int MKL_Set_Num_Threads_Local(int threads);

namespace cmgm {
namespace {

using Body = std::function<void(int64_t)>;

// How long a worker spins after its last chunk before it sleeps: calls back to
// back find it awake, an idle process stops burning a core soon after.
constexpr auto kSpin = std::chrono::microseconds(1000);
constexpr int64_t kMaxChunks = 0xffff;
// Short calls that start within this of each other are a burst: the workers are woken for the ones that follow.
constexpr auto kBurst = std::chrono::milliseconds(5);

thread_local bool in_region = false;  // this thread runs a chunk, or is a region's caller
thread_local bool is_worker = false;
std::atomic<bool> workers_held{false};

uint32_t generation(uint64_t word) { return static_cast<uint32_t>(word >> 32); }
int64_t total_chunks(uint64_t word) { return static_cast<int64_t>((word >> 16) & 0xffff); }
int64_t next_chunk(uint64_t word) { return static_cast<int64_t>(word & 0xffff); }

// A worker woken from sleep is put by the scheduler on the CPU of the thread that woke it, even with
// another CPU idle, and the two then take turns there until a load balance moves one of them.
// The worker moves itself to the process's other CPUs at once instead: there it runs beside the caller,
// not in its way (on a guest whose idle vCPUs halt, it gets there ~2 ms later; the caller claims the
// chunks meanwhile). Its affinity is given back as it was.
void leave_callers_cpu(int caller_cpu) {
#ifdef __linux__
  if (caller_cpu < 0 || current_cpu() != caller_cpu) return;
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || !CPU_ISSET(caller_cpu, &allowed) || CPU_COUNT(&allowed) < 2) return;
  cpu_set_t others = allowed;
  CPU_CLR(caller_cpu, &others);
  if (sched_setaffinity(0, sizeof others, &others) == 0) sched_setaffinity(0, sizeof allowed, &allowed);
#else
  (void)caller_cpu;
#endif
}

// ATen sets a thread's OpenMP count to torch's on the thread's first parallel_for;
// an empty one here makes that happen before the count is set to 1.
void let_aten_initialise_this_thread() {
  torch_parallel_for(0, 1, 1, [](int64_t, int64_t, void*) {}, nullptr);
}

class Pool {
 public:
  explicit Pool(int workers) {
    for (int index = 0; index < workers; ++index) threads_.emplace_back([this] { work(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& thread : threads_) thread.join();
  }

  int threads() const { return static_cast<int>(threads_.size()) + 1; }

  bool any_asleep() const { return sleeping_.load() > 0; }

  // Wakes the sleeping workers to spin, ready for the next region, without starting one.
  void wake_ahead() {
    caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      ++wake_calls_;
    }
    wake_.notify_all();
  }

  // The caller holds pool_mutex: one region at a time.
  void run(int64_t chunks, const Body& body) {
    body_.store(&body, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    const uint32_t region = generation(word_.load()) + 1;
    word_.store((uint64_t{region} << 32) | (static_cast<uint64_t>(chunks) << 16));
    if (sleeping_.load() > 0) {
      caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    claim_and_run(region);
    for (int spins = 0; done_.load(std::memory_order_acquire) < chunks; ++spins) {
      if (spins < 4096) {
        CMGM_SPIN_PAUSE();
      } else {
        std::this_thread::yield();  // a worker holding a chunk was descheduled
      }
    }
    body_.store(nullptr, std::memory_order_relaxed);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void claim_and_run(uint32_t region) {
    uint64_t word = word_.load();
    while (generation(word) == region && next_chunk(word) < total_chunks(word)) {
      if (!word_.compare_exchange_weak(word, word + 1)) continue;
      const int64_t chunk = next_chunk(word);
      try {
        (*body_.load(std::memory_order_relaxed))(chunk);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_release);
      word = word_.load();
    }
  }

  void work() {
    is_worker = in_region = true;
    const SingleThreadedLibraries one_thread;
    uint32_t seen = 0;  // the pool's first region is 1: one that started before this thread did is still found
    for (;;) {
      if (!wait_for_region(seen)) return;
      seen = generation(word_.load());
      if (!workers_held.load(std::memory_order_relaxed)) claim_and_run(seen);
    }
  }

  // Spins for kSpin, then sleeps, until a region after `seen` starts; false when the pool stops. Woken
  // ahead of a region (wake_ahead), spins for kSpin again.
  bool wait_for_region(uint32_t seen) {
    for (bool ahead = false;; ahead = true) {
      const auto deadline = std::chrono::steady_clock::now() + kSpin;
      for (int spins = 1;; ++spins) {
        if (generation(word_.load()) != seen) return true;
        if (ahead) {
          std::this_thread::yield();  // woken ahead of a call: give way to the caller if they share a core
        } else {
          CMGM_SPIN_PAUSE();
        }
        if (spins % 64 == 0 && std::chrono::steady_clock::now() > deadline) break;
      }
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      const uint64_t wake_calls = wake_calls_;
      sleeping_.fetch_add(1);
      wake_.wait(lock, [&] { return stopping_ || generation(word_.load()) != seen || wake_calls_ != wake_calls; });
      sleeping_.fetch_sub(1);
      if (stopping_) return false;
      lock.unlock();
      leave_callers_cpu(caller_cpu_.load(std::memory_order_relaxed));
      if (generation(word_.load()) != seen) return true;
    }
  }

  std::vector<std::thread> threads_;
  std::atomic<uint64_t> word_{0};
  std::atomic<const Body*> body_{nullptr};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<int> caller_cpu_{-1};  // where the thread that last woke the workers ran
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  uint64_t wake_calls_ = 0;  // guarded by sleep_mutex_
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

std::mutex pool_mutex;  // guards the_pool and pool_pid
std::unique_ptr<Pool> the_pool;
pid_t pool_pid = 0;

// The process's pool with threads - 1 workers, made (again) when the count
// changes or after a fork (a child has none of its parent's threads).
Pool& pool_of(int threads) {
  if (pool_pid != getpid()) {
    the_pool.release();  // its threads are the parent's; nothing to join here
    pool_pid = getpid();
  }
  if (!the_pool || the_pool->threads() != threads) {
    the_pool.reset();
    the_pool = std::make_unique<Pool>(threads - 1);
  }
  return *the_pool;
}

void run_inline(int64_t chunks, const Body& body) {
  for (int64_t chunk = 0; chunk < chunks; ++chunk) body(chunk);
}

// Marks the calling thread as a region's caller while alive, so that a region it starts inside runs inline.
class CallerOfRegion {
 public:
  CallerOfRegion() { in_region = true; }
  ~CallerOfRegion() { in_region = false; }
};

}  // namespace

void run_chunks(int64_t chunks, int threads, const Body& body) {
  if (chunks <= 0) return;
  if (threads <= 1 || chunks == 1 || chunks > kMaxChunks || in_region) return run_inline(chunks, body);
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (!lock.owns_lock()) return run_inline(chunks, body);  // another thread's region is running
  Pool& pool = pool_of(threads);
  const CallerOfRegion caller;
  pool.run(chunks, body);
}

void run_ranges(int64_t count, int64_t parts, int threads, const std::function<void(int64_t, int64_t)>& body) {
  parts = std::max<int64_t>(1, std::min(parts, count));
  run_chunks(parts, threads, [&](int64_t part) { body(part * count / parts, (part + 1) * count / parts); });
}

bool on_pool_worker() { return is_worker; }

int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

bool short_call_threads_ready(int threads) {
  if (threads <= 1 || in_region) return true;
  static std::atomic<int64_t> last_start{0};  // steady-clock nanoseconds
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  const bool in_burst = now - last_start.exchange(now) < std::chrono::nanoseconds(kBurst).count();
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (!lock.owns_lock()) return true;  // another thread's region is running: this call's regions run inline anyway
  Pool& pool = pool_of(threads);
  if (!pool.any_asleep()) return true;
  if (in_burst) pool.wake_ahead();
  return false;
}

void hold_workers(bool held) { workers_held.store(held); }

SingleThreadedLibraries::SingleThreadedLibraries() : omp_threads_(0), mkl_threads_(0) {
  let_aten_initialise_this_thread();
  omp_threads_ = omp_get_max_threads();
  omp_set_num_threads(1);
  if (MKL_Set_Num_Threads_Local) mkl_threads_ = MKL_Set_Num_Threads_Local(1);
}

SingleThreadedLibraries::~SingleThreadedLibraries() {
  omp_set_num_threads(omp_threads_);
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(mkl_threads_);
}

}  // namespace cmgm
