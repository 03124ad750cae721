#pragma once
// The report's several-questions section (rules doc 1.8): one compressed context asked several
// questions, each question's perturbation per rule and budget, from metrics_per_question.csv.
#include <string>

#include "report/html_parts.h"
#include "report/replay_outputs.h"

namespace kvsim::report {

// Empty unless the output folder holds metrics_per_question.csv.
std::string questions_section(const ReplayOutput& out, const std::string& id, const Labels& L);

}  // namespace kvsim::report
