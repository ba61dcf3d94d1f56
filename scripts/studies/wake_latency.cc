// How long a sleeping worker thread takes to run after a condition-variable notify, following an idle gap,
// and on which CPU it runs: the notifier's own (the scheduler's wake-affine choice, sharing one core with
// the caller) or another. With `move`, a worker woken on the notifier's CPU moves itself to the other
// CPUs of its affinity mask first, so the figure is the time until it runs beside the caller, on a CPU
// that sat idle through the gap (on a VM, a halted vCPU). The notifier keeps its CPU busy meanwhile, as a
// caller running the first chunks of a call would.
//
//     g++ -O2 -pthread scripts/studies/wake_latency.cc -o /tmp/wake_latency
//     /tmp/wake_latency GAP_MS [move]
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

std::mutex mutex;
std::condition_variable wake;
bool go = false;
std::atomic<int64_t> arrived_ns{0};  // 0 until the worker runs after a notify
std::atomic<int> worker_cpu{-1};
std::atomic<int> caller_cpu{-1};
Clock::time_point notified;

void worker(bool move, cpu_set_t allowed) {
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex);
    wake.wait(lock, [] { return go; });
    go = false;
    lock.unlock();
    int cpu = sched_getcpu();
    if (move && cpu == caller_cpu.load()) {
      cpu_set_t others = allowed;
      CPU_CLR(cpu, &others);
      sched_setaffinity(0, sizeof others, &others);  // returns once this thread runs on one of them
      sched_setaffinity(0, sizeof allowed, &allowed);
      cpu = sched_getcpu();
    }
    worker_cpu = cpu;
    arrived_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - notified).count();
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s GAP_MS [move]\n", argv[0]);
    return 2;
  }
  const int gap_ms = std::atoi(argv[1]);
  const bool move = argc > 2 && std::strcmp(argv[2], "move") == 0;
  cpu_set_t allowed;
  sched_getaffinity(0, sizeof allowed, &allowed);
  std::thread(worker, move, allowed).detach();
  constexpr int kTrials = 100;
  std::vector<double> latency_us;
  int on_caller_cpu = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms));
    arrived_ns = 0;
    caller_cpu = sched_getcpu();
    notified = Clock::now();
    {
      std::lock_guard<std::mutex> lock(mutex);
      go = true;
    }
    wake.notify_one();
    const auto give_up_spinning = Clock::now() + std::chrono::milliseconds(20);
    while (arrived_ns.load() == 0 && Clock::now() < give_up_spinning) {
    }
    while (arrived_ns.load() == 0) std::this_thread::yield();
    latency_us.push_back(arrived_ns.load() / 1e3);
    on_caller_cpu += worker_cpu.load() == caller_cpu.load();
  }
  std::sort(latency_us.begin(), latency_us.end());
  std::printf("gap %d ms%s: worker runs after p10 %.1f, median %.1f, p90 %.1f, max %.1f us; on the caller's CPU %d of %d\n", gap_ms,
              move ? ", moved off the caller's CPU" : "", latency_us[kTrials / 10], latency_us[kTrials / 2], latency_us[kTrials * 9 / 10],
              latency_us.back(), on_caller_cpu, kTrials);
  std::fflush(stdout);
  std::_Exit(0);  // the worker waits forever
}
