#pragma once
// The report's memory section (rules doc 2.33): memory against perturbation overall and per
// layer, the Pareto front, and the best eviction / quantization / combination at each mem= level.
#include <string>

#include "report/html_parts.h"
#include "report/replay_outputs.h"

namespace kvsim::report {

// Empty unless the output holds a quant(...) rule.
std::string memory_section(const ReplayOutput& out, const std::string& id, const Labels& L);

}  // namespace kvsim::report
