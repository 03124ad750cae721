#pragma once
// The machine's FP32 FMA peak, measured rather than looked up: every thread runs a loop of
// independent vector FMAs on registers only (12 accumulators: enough to cover two FMA ports of
// latency 4-6), with the widest kernel set the CPU has (the machine's peak, whatever KVSIM_FORCE_ISA says). `kvsim bench`
// divides its rates by this number, so "x% of peak" is measured on the same machine and minute.
#include "core/types.h"

namespace kvsim::kernels {

// One ISA's loop: `iters` rounds of 12 FMAs on W-lane vectors; returns a value that depends on
// every accumulator (so the loop is not removed). flops = iters * 12 * lanes * 2.
namespace scalar {
float fma_loop(i64 iters);
}
namespace avx2 {
float fma_loop(i64 iters);
}
namespace avx512 {
float fma_loop(i64 iters);
}

struct FmaPeak {
  double gflops_per_thread = 0;  // best thread's rate
  double gflops_all = 0;         // sum over `threads` threads running at once
  int threads = 0;
  int lanes = 0;                 // float lanes per FMA of the kernel set that ran
};
// Best of `reps` timings of about `seconds` each (per thread, thread CPU time, so a preempted
// thread does not lower the peak; a core shared with another process still halves wall rate).
FmaPeak measure_fma_peak(int threads, double seconds = 0.1, int reps = 3);

}  // namespace kvsim::kernels
