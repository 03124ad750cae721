#pragma once
// torch as the in-run anchor of `kvsim bench`: the bench layer and a set of selections are
// written to a temporary folder with kvsim's own metrics of them, tools/bench_torch.py times
// torch's bmm on the attention core's shapes and a competent torch replay of the same
// selections, and checks its numbers against kvsim's. kvsim's side (attention core + metrics of
// every selection, selection itself excluded on both sides) is timed here, in the same run.
#include <string>

#include "replay/replay_bench.h"

namespace kvsim::bench {

struct TorchAnchor {
  std::string error;           // non-empty: torch did not run (not installed, script failed)
  std::string torch_version, blas;
  int selections = 0;
  double torch_bmm_s = 0;      // the core's two GEMMs (QK^T, PV) through torch.bmm
  double torch_core_s = 0;     // the whole core in torch (bmm, mask, softmax, bmm)
  double torch_replay_s = 0;   // core once + every selection's metrics in torch
  double kvsim_replay_s = 0;   // the same work in kvsim (LayerCache core + measure_perturbations)
  double max_rel_diff_l1 = 0, max_rel_diff_F = 0;  // torch's rows against kvsim's
};

// Rules and budgets of the anchored selections (8 selections, two rules, kv mode).
inline constexpr const char* kTorchAnchorRules = "snapkv;streaming";
inline constexpr const char* kTorchAnchorBudgets = "0.1,0.2,0.3,0.5";

TorchAnchor run_torch_anchor(const BenchLayer& b, int threads, int reps, const std::string& python,
                             const std::string& script);

}  // namespace kvsim::bench
