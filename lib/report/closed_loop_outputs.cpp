#include "report/closed_loop_outputs.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "report/closed_loop_columns.h"
#include "report/csv_reader.h"
#include "report/rank_stats.h"

namespace kvsim::report {

bool is_closed_loop_output(const std::string& dir) {
  return std::filesystem::exists(dir + "/closed_loop.json") && std::filesystem::exists(dir + "/offline_vs_closed.csv");
}

ClosedLoopOutput load_closed_loop_output(const std::string& dir) {
  ClosedLoopOutput c;
  c.dir = dir;
  c.doc = JsonValue::read_file(dir + "/closed_loop.json");
  const CsvTable t = CsvTable::read(dir + "/offline_vs_closed.csv");
  const std::size_t rule = t.column("rule"), budget = t.column("budget"), mode = t.column("mode");
  const auto col = [&](const char* name) { return declared_column(t, offline_vs_closed_schema(), name); };
  const std::size_t kept = col("kept_tokens"), pert = col("offline_pert_l1"), rel = col("offline_rel_pert_l1"),
                    crit = col("offline_bound_critical"), ada = col("offline_bound_ada"),
                    mass = col("offline_retained_mass"), kl = col("kl_mean"), agree = col("token_agreement"),
                    dlp = col("delta_logprob"), drift = col("hidden_drift_last"), free = col("free_agreement"),
                    needle = col("needle_recall");
  for (std::size_t r = 0; r < t.rows(); ++r) {
    ClosedLoopRun x;
    x.rule = t.cell(r, rule);
    x.budget = t.cell(r, budget);
    x.mode = t.cell(r, mode);
    x.kept_tokens = t.number(r, kept);
    x.offline_pert_l1 = t.number(r, pert);
    x.offline_rel_pert_l1 = t.number(r, rel);
    x.offline_bound_critical = t.number(r, crit);
    x.offline_bound_ada = t.number(r, ada);
    x.offline_retained_mass = t.number(r, mass);
    x.kl_mean = t.number(r, kl);
    x.token_agreement = t.number(r, agree);
    x.delta_logprob = t.number(r, dlp);
    x.hidden_drift_last = t.number(r, drift);
    x.free_agreement = t.number(r, free);
    x.needle_recall = t.number(r, needle);
    c.runs.push_back(std::move(x));
  }
  c.replay = load_replay_output(dir + "/replay");
  return c;
}

namespace {

using Member = double ClosedLoopRun::*;

double finite_spearman(const std::vector<const ClosedLoopRun*>& runs, Member a, Member b) {
  std::vector<double> x, y;
  for (const auto* r : runs)
    if (std::isfinite(r->*a) && std::isfinite(r->*b)) {
      x.push_back(r->*a);
      y.push_back(r->*b);
    }
  return x.size() < 3 ? std::nan("") : spearman(x, y);
}

}  // namespace

std::vector<RankCorrelation> closed_loop_correlations(const ClosedLoopOutput& c) {
  const std::vector<std::tuple<const char*, Member, const char*, Member>> pairs = {
      {"offline pert_l1", &ClosedLoopRun::offline_pert_l1, "KL", &ClosedLoopRun::kl_mean},
      {"offline pert_l1", &ClosedLoopRun::offline_pert_l1, "last-layer drift", &ClosedLoopRun::hidden_drift_last},
      {"offline rel_pert_l1", &ClosedLoopRun::offline_rel_pert_l1, "KL", &ClosedLoopRun::kl_mean},
      {"offline bound_critical", &ClosedLoopRun::offline_bound_critical, "KL", &ClosedLoopRun::kl_mean},
      {"offline bound_ada", &ClosedLoopRun::offline_bound_ada, "KL", &ClosedLoopRun::kl_mean},
      {"offline retained_mass", &ClosedLoopRun::offline_retained_mass, "KL", &ClosedLoopRun::kl_mean},
      {"offline pert_l1", &ClosedLoopRun::offline_pert_l1, "Δ log-likelihood", &ClosedLoopRun::delta_logprob},
      {"offline pert_l1", &ClosedLoopRun::offline_pert_l1, "free-run agreement", &ClosedLoopRun::free_agreement}};
  std::vector<const ClosedLoopRun*> runs;
  std::map<std::string, std::vector<const ClosedLoopRun*>> by_budget;
  for (const auto& r : c.runs)
    if (r.mode != "blockwise") {
      runs.push_back(&r);
      by_budget[r.budget].push_back(&r);
    }
  std::vector<RankCorrelation> out;
  for (const auto& [xn, x, yn, y] : pairs) {
    RankCorrelation rc{xn, yn, static_cast<int>(runs.size()), finite_spearman(runs, x, y), 0};
    double sum = 0;
    int n = 0;
    for (const auto& [b, group] : by_budget) {
      const double s = finite_spearman(group, x, y);
      if (std::isfinite(s)) {
        sum += s;
        ++n;
      }
    }
    rc.within_budget = n ? sum / n : std::nan("");
    out.push_back(rc);
  }
  return out;
}

}  // namespace kvsim::report
