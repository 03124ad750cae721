#include "report/sweep_outputs.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/text.h"
#include "report/paper_claims.h"

namespace kvsim::report {

bool is_sweep_output(const std::string& dir) { return std::filesystem::exists(dir + "/sweep.json"); }

SweepOutput load_sweep_output(const std::string& dir) {
  SweepOutput s;
  s.dir = dir;
  s.sweep = JsonValue::read_file(dir + "/sweep.json");
  const JsonValue* traces = s.sweep.find("traces");
  if (!traces || !traces->is_array()) fail(dir + "/sweep.json", "traces", "missing or not a list");
  for (const auto& t : traces->items()) {
    SweepTrace st;
    st.label = t.get_string("label");
    // A label names a folder inside the sweep: one path component, never a way out of it.
    if (st.label.empty() || st.label == "." || st.label == ".." || st.label.find('/') != std::string::npos ||
        st.label.find('\0') != std::string::npos)
      fail(dir + "/sweep.json", "traces[].label",
           "'" + shorten_utf8(st.label, 80) + "' is not a folder name inside the sweep folder");
    st.path = t.get_string("path");
    st.status = t.get_string("status");
    st.error = t.get_string("error");
    st.units = static_cast<long long>(t.get_number("units", 0));
    st.seconds = t.get_number("seconds", 0);
    if (st.status == "ok") {
      s.replays.push_back(load_replay_output(dir + "/" + st.label));
      s.labels.push_back(st.label);
    }
    s.traces.push_back(std::move(st));
  }
  return s;
}

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void mean_std(const std::vector<double>& v, double& mean, double& sd) {
  mean = sd = std::nan("");
  if (v.empty()) return;
  double s = 0;
  for (double x : v) s += x;
  mean = s / static_cast<double>(v.size());
  double q = 0;
  for (double x : v) q += (x - mean) * (x - mean);
  sd = v.size() > 1 ? std::sqrt(q / static_cast<double>(v.size() - 1)) : 0.0;
}

}  // namespace

std::vector<CrossTraceStats> cross_trace_stats(const SweepOutput& s) {
  struct Acc {
    std::vector<double> tokens, pert, mass, tight;
  };
  std::map<std::pair<std::string, std::string>, Acc> acc;
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& r : s.replays) {
    for (const auto& st : rule_budget_stats(r)) {
      const auto key = std::make_pair(st.rule, st.budget);
      if (!acc.count(key)) order.push_back(key);
      Acc& a = acc[key];
      a.tokens.push_back(st.budget_tokens);
      a.pert.push_back(st.pert_l1);
      a.mass.push_back(st.retained_mass);
      std::vector<double> ratios;
      for (const auto& row : r.rows)
        if (row.rule == st.rule && row.budget == st.budget && row.head >= 0 && row.eval == r.eval &&
            row.bound_critical > 0)
          ratios.push_back(row.pert_l1 / row.bound_critical);
      a.tight.push_back(median(ratios));
    }
  }
  std::vector<CrossTraceStats> out;
  for (const auto& key : order) {
    const Acc& a = acc[key];
    CrossTraceStats c;
    c.rule = key.first;
    c.budget = key.second;
    c.traces = static_cast<int>(a.pert.size());
    double sd = 0;
    mean_std(a.tokens, c.budget_tokens_mean, sd);
    mean_std(a.pert, c.pert_l1_mean, c.pert_l1_std);
    c.pert_l1_min = *std::min_element(a.pert.begin(), a.pert.end());
    c.pert_l1_max = *std::max_element(a.pert.begin(), a.pert.end());
    mean_std(a.mass, c.retained_mass_mean, c.retained_mass_std);
    std::vector<double> tight;
    for (double t : a.tight)
      if (std::isfinite(t)) tight.push_back(t);
    mean_std(tight, c.tightness_mean, c.tightness_std);
    out.push_back(c);
  }
  return out;
}

}  // namespace kvsim::report
