#pragma once
// The report's decode-protocol section (rules doc 1.9): how the perturbation accumulates over the
// generation for every rule and budget, from metrics_per_query.csv.
#include <string>

#include "report/html_parts.h"
#include "report/replay_outputs.h"

namespace kvsim::report {

// Empty unless summary.json's protocol is "decode"; a note when metrics_per_query.csv is absent.
std::string decode_section(const ReplayOutput& out, const std::string& id, const Labels& L);

}  // namespace kvsim::report
