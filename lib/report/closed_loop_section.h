#pragma once
// The report's closed-loop section: offline replay metrics against what the model did after a
// real eviction (kvsim-closed-loop folders), with rank correlations and the KeyDiff gap.
#include <string>

#include "report/closed_loop_outputs.h"

namespace kvsim::report {

std::string closed_loop_section(const ClosedLoopOutput& c, const std::string& id);

}  // namespace kvsim::report
