#pragma once
// The self-contained HTML report of `kvsim report`: one section per replay output folder
// (header, bound vs actual, rule comparison, CriticalKV win rate, Ada-KV allocation effect),
// then the KeyDiff premise (kvsim analyze folders) and CritiPrefill (kvsim prefill folders).
// Plots are inline SVG; the page loads nothing from the network.
#include <string>
#include <vector>

#include "report/analysis_files.h"
#include "report/closed_loop_outputs.h"
#include "report/prefill_outputs.h"
#include "report/replay_outputs.h"
#include "report/sweep_outputs.h"

namespace kvsim::report {

struct ReportInputs {
  std::vector<ReplayOutput> replays;
  std::vector<AnalyzeOutput> analyses;
  std::vector<PrefillOutput> prefills;
  std::vector<ClosedLoopOutput> closed_loops;  // kvsim-closed-loop folders (their replay/ follows)
  std::vector<SweepOutput> sweeps;  // kvsim sweep folders: a cross-trace summary, then per-trace sections
  int max_sweep_sections = 8;       // per-trace sections shown per sweep (all traces are in the summary)
  std::string command;  // the kvsim report command line, shown in the page header
  std::string version;  // kvsim version
};

std::string render_html_report(const ReportInputs& in);

}  // namespace kvsim::report
