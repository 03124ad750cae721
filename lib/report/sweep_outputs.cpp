#include "report/sweep_outputs.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <tuple>

#include "core/error.h"
#include "core/text.h"
#include "report/paper_claims.h"
#include "rules/budget.h"

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

namespace {

std::string model_of(const ReplayOutput& r) {
  const JsonValue* t = r.summary.find("trace");
  if (!t) return "(model not recorded)";
  const auto n = [&](const char* k) {
    const double v = t->get_number(k, NAN);
    return std::isfinite(v) ? std::to_string(static_cast<long long>(v)) : std::string("?");
  };
  // The file name only: dumps of one model record it with and without folders.
  std::string name = t->get_string("model", "");
  name = name.substr(name.find_last_of('/') + 1);
  if (name.empty()) name = "(unnamed model)";
  return name + " (" + n("num_layers") + " layers, " + n("num_heads") + "/" + n("num_kv_heads") + " heads, d " +
         n("head_dim") + ")";
}

// The budget as typed, on one axis: its kept fraction (f or 1 - cr) or its token count.
bool typed_budget(const std::string& text, double& x, bool& tokens) {
  try {
    const Budget b = Budget::parse(text);
    tokens = b.kind == Budget::Kind::tokens;
    x = b.kind == Budget::Kind::compression_ratio ? 1 - b.value : b.value;
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::string budget_axis(const std::vector<CrossTraceStats>& stats) {
  bool fractions = true, tokens = true;
  for (const auto& c : stats) {
    double x = 0;
    bool is_tokens = false;
    if (!typed_budget(c.budget, x, is_tokens)) fractions = tokens = false;
    (is_tokens ? fractions : tokens) = false;
  }
  if (fractions) return "budget: kept fraction (as typed; cr=R is 1 - R)";
  if (tokens) return "budget: tokens per head (as typed)";
  return "budget: kept fraction of n_c (mean over traces)";
}

std::vector<CrossTraceStats> cross_trace_stats(const SweepOutput& s) {
  struct Acc {
    std::vector<double> tokens, fraction, pert, rel, mass, tight;
  };
  using Key = std::tuple<std::string, std::string, std::string>;  // model, rule, budget
  std::map<Key, Acc> acc;
  std::vector<Key> order;
  for (const auto& r : s.replays) {
    const std::string model = model_of(r);
    const double n_c = r.summary.find("protocol") ? r.summary.find("protocol")->get_number("n_c", NAN) : NAN;
    for (const auto& st : rule_budget_stats(r)) {
      const Key key{model, st.rule, st.budget};
      if (!acc.count(key)) order.push_back(key);
      Acc& a = acc[key];
      a.tokens.push_back(st.budget_tokens);
      a.fraction.push_back(st.budget_tokens / n_c);
      a.pert.push_back(st.pert_l1);
      a.rel.push_back(st.rel_pert_l1);
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
    std::tie(c.model, c.rule, c.budget) = key;
    c.traces = static_cast<int>(a.pert.size());
    double sd = 0, fraction = 0;
    mean_std(a.tokens, c.budget_tokens_mean, sd);
    mean_std(a.fraction, fraction, sd);
    mean_std(a.pert, c.pert_l1_mean, c.pert_l1_std);
    c.pert_l1_min = *std::min_element(a.pert.begin(), a.pert.end());
    c.pert_l1_max = *std::max_element(a.pert.begin(), a.pert.end());
    mean_std(a.rel, c.rel_pert_l1_mean, c.rel_pert_l1_std);
    c.rel_pert_l1_min = *std::min_element(a.rel.begin(), a.rel.end());
    c.rel_pert_l1_max = *std::max_element(a.rel.begin(), a.rel.end());
    mean_std(a.mass, c.retained_mass_mean, c.retained_mass_std);
    std::vector<double> tight;
    for (double t : a.tight)
      if (std::isfinite(t)) tight.push_back(t);
    mean_std(tight, c.tightness_mean, c.tightness_std);
    c.budget_x = fraction;
    out.push_back(c);
  }
  // Every budget on the axis budget_axis() names: as typed where the study's budgets share a kind.
  const std::string axis = budget_axis(out);
  if (axis.find("as typed") != std::string::npos)
    for (auto& c : out) {
      bool tokens = false;
      typed_budget(c.budget, c.budget_x, tokens);
    }
  return out;
}

}  // namespace kvsim::report
