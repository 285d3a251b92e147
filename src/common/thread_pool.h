#pragma once
// A fixed pool of worker threads for data-parallel loops. parallel_for splits [0, n) into
// contiguous chunks, runs them on the workers and the calling thread, and returns when all
// are done. Nested calls from inside a worker run serially.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dsv2 {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // fn(begin, end, thread_index); chunks are at least `grain` items.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain = 1);

  // The process-wide pool (size set once by set_global_threads, default: hardware threads).
  static ThreadPool& global();
  static void set_global_threads(int n);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0, job_chunks_ = 0;
  int64_t next_chunk_ = 0;
  std::atomic<int64_t> done_chunks_{0};
  std::atomic<uint64_t> generation_{0};  // read without the lock while spinning
  bool stop_ = false;
  std::mutex run_mu_;  // one parallel_for at a time
};

int hardware_threads();

}  // namespace dsv2
