#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include <immintrin.h>

#include <unistd.h>

namespace dsv2 {

namespace {
thread_local bool t_in_worker = false;

// A forward pass is a chain of short parallel loops: a worker that slept between two of them
// costs a futex wake-up each time. Workers and the caller spin this long before blocking.
constexpr auto kSpin = std::chrono::microseconds(100);

template <typename Pred>
bool spin_until(Pred done) {
  auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    _mm_pause();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
  }
}
std::unique_ptr<ThreadPool> g_pool;
int g_threads = 0;
std::mutex g_pool_mu;
}  // namespace

int hardware_threads() {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? int(n) : 1;
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int index) {
  t_in_worker = true;
  uint64_t seen = 0;
  for (;;) {
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
    std::unique_lock<std::mutex> lock(mu_);
    cv_work_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
    if (stop_) return;
    seen = generation_.load(std::memory_order_relaxed);
    while (next_chunk_ < job_chunks_) {
      int64_t c = next_chunk_++;
      auto* fn = job_;
      int64_t b = c * job_chunk_, e = std::min(job_n_, b + job_chunk_);
      lock.unlock();
      (*fn)(b, e, index);
      lock.lock();
      if (done_chunks_.fetch_add(1) + 1 == job_chunks_) cv_done_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || t_in_worker || n <= grain) {
    fn(0, n, 0);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mu_);
  // A few chunks per thread balances uneven work without much overhead.
  int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(n_threads_) * 4);
  int64_t chunk = (n + chunks - 1) / chunks;
  chunks = (n + chunk - 1) / chunk;
  std::unique_lock<std::mutex> lock(mu_);
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = chunk;
  job_chunks_ = chunks;
  next_chunk_ = 0;
  done_chunks_.store(0);
  generation_.fetch_add(1, std::memory_order_release);
  cv_work_.notify_all();
  t_in_worker = true;
  while (next_chunk_ < job_chunks_) {
    int64_t c = next_chunk_++;
    int64_t b = c * chunk, e = std::min(n, b + chunk);
    lock.unlock();
    fn(b, e, 0);
    lock.lock();
    done_chunks_.fetch_add(1);
  }
  t_in_worker = false;
  const int64_t chunks_total = job_chunks_;
  lock.unlock();
  spin_until([&] { return done_chunks_.load(std::memory_order_acquire) == chunks_total; });
  lock.lock();
  cv_done_.wait(lock, [&] { return done_chunks_.load() == chunks_total; });
  job_ = nullptr;
}

ThreadPool& ThreadPool::global() {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (!g_pool) g_pool = std::make_unique<ThreadPool>(g_threads > 0 ? g_threads : hardware_threads());
  return *g_pool;
}

void ThreadPool::set_global_threads(int n) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  g_threads = n;
  g_pool.reset();
}

}  // namespace dsv2
