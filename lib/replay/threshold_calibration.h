#pragma once
// Matched comparisons for threshold budgets (rules doc 1.4): the threshold X at which a plain
// scorer, with budget thr=X, keeps a given share of the compressible tokens over a whole trace
// (all layers and selection units together), so its kept tokens match the other rules' at that
// fraction while each head and layer keeps its own count.
#include <string>

#include "replay/protocol.h"

namespace kvsim {

struct ThresholdCalibration {
  double threshold = 0;   // thr=X keeps kept_fraction of the trace's compressible tokens
  double kept_fraction = 0;  // achieved (protected tokens included), over layers and units
  long long candidates = 0;  // scored (unprotected) tokens over layers and units
};

// Scores every layer of the trace with rule (a plain scorer or dms(...)) and returns the largest
// X keeping at least `fraction` (0, 1] of the compressible tokens. Throws naming the rule or the
// trace when the rule has no per-token scores or its protected tokens alone exceed the fraction.
ThresholdCalibration calibrate_threshold(const std::string& trace, const std::string& rule, double fraction,
                                         const ProtocolOptions& protocol = {});

}  // namespace kvsim
