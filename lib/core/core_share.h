#pragma once
// Threads on a shared machine. OpenMP's threads wait for each other at every barrier, so when
// another process keeps a core busy, a thread placed on that core makes the whole team wait
// (measured: 2 threads 0.80-0.94x the speed of 1 with the second core busy). CoreShare measures
// how many cores other processes used since its last look (all cores' busy time from /proc/stat,
// steal included, minus this process's own CPU time) and offers OpenMP only the rest, between 1
// and the ceiling it was built with. Results do not depend on the thread count (every reduction
// has a fixed order), so changing it between pieces of work changes only the speed.
namespace kvsim {

class CoreShare {
 public:
  // ceiling: the most threads to use (OpenMP's count at the start); adaptive = false keeps it fixed.
  CoreShare(int ceiling, bool adaptive);
  // The thread count for the next piece of work, set with omp_set_num_threads. Looks at the
  // machine only when at least 0.2 s passed since the last look (a shorter window is noise).
  int apply();
  void restore() const;  // OpenMP back to the ceiling
  int min_used() const { return min_used_; }
  int max_used() const { return max_used_; }
  bool adaptive() const { return adaptive_; }

  // The count for `others` cores busy with other processes on `cores` cores (rounded: a
  // process using under half a core does not cost a thread). Exposed for the tests.
  static int threads_for(double others, int cores, int ceiling);

 private:
  struct Sample {
    double wall = 0, busy = 0, self = 0;  // seconds: steady clock, all cores' busy time, own CPU time
    bool ok = false;
  };
  static Sample sample();
  int ceiling_, current_, min_used_, max_used_;
  bool adaptive_;
  Sample last_;
};

}  // namespace kvsim
