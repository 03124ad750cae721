#include "rules/scored_rule.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim {

void UnitScores::protect_range(i64 begin, i64 end) {
  for (i64 j = std::max<i64>(0, begin); j < std::min(end, n_c); ++j) {
    n_protected += protect[j] == 0;
    protect[j] = 1;
  }
}

std::vector<float> UnitScores::linear_scores(int u) const {
  std::vector<float> out(unit(u), unit(u) + n_c);
  if (log_space)
    for (float& x : out) x = std::exp(x);
  return out;
}

std::vector<i64> rank_unprotected(const float* score, const std::uint8_t* protect, i64 n, i64 k) {
  // Compact the unprotected candidates (order-preserving, so "lower position wins a tie" holds).
  std::vector<float> cand;
  std::vector<i64> pos;
  cand.reserve(n);
  pos.reserve(n);
  for (i64 j = 0; j < n; ++j)
    if (!protect[j]) {
      cand.push_back(score[j]);
      pos.push_back(j);
    }
  k = std::min<i64>(k, static_cast<i64>(cand.size()));
  std::vector<i64> idx(std::max<i64>(k, 0));
  const i64 got = k > 0 ? kernels::topk(cand.data(), static_cast<i64>(cand.size()), k, idx.data()) : 0;
  idx.resize(got);
  for (auto& i : idx) i = pos[i];
  return idx;
}

i64 ties_at_cut(const float* score, const std::uint8_t* candidate, const std::uint8_t* kept, i64 n) {
  float cut = INFINITY;
  bool any_kept = false;
  for (i64 j = 0; j < n; ++j)
    if ((!candidate || candidate[j]) && kept[j]) {
      cut = std::min(cut, score[j]);
      any_kept = true;
    }
  if (!any_kept) return 0;
  i64 tied = 0;
  bool evicted_tie = false;
  for (i64 j = 0; j < n; ++j)
    if ((!candidate || candidate[j]) && score[j] == cut) {
      ++tied;
      evicted_tie = evicted_tie || !kept[j];
    }
  return evicted_tie ? tied : 0;
}

int units_for(GqaMode mode, const LayerData& d) { return mode == GqaMode::kv ? d.num_kv_heads : d.num_heads; }

UnitScores ScoredRule::scores_range(const RuleInput&, i64, i64) const {
  fail(spec(), "", "this rule cannot score a sub-span (it cannot be wrapped by chunk)");
}

QueryScoreRows ScoredRule::query_rows(const RuleInput&, i64, i64) const {
  fail(spec(), "", "has no per-query score rows (its scores do not aggregate over observation queries)");
}

i64 ScoredRule::layer_budget(const RuleInput&, const UnitScores&, i64 B, double) const { return B; }

i64 ScoredRule::forced_per_unit(const RuleInput&, const UnitScores&, i64) const { return 0; }

std::vector<i64> ScoredRule::unit_budgets(const RuleInput&, const UnitScores& s, i64 layer_budget) const {
  return std::vector<i64>(s.units, layer_budget);
}

std::vector<Selection> ScoredRule::select_counts(const RuleInput&, const UnitScores& s,
                                                 const std::vector<UnitCounts>& counts) const {
  std::vector<Selection> out;
  for (std::size_t b = 0; b < counts.size(); ++b) {
    out.emplace_back(s.mode, s.units, s.n_c);
    out.back().tied_at_cut.assign(s.units, 0);
  }
  std::vector<std::uint8_t> candidate(s.protect.size());
  for (std::size_t j = 0; j < candidate.size(); ++j) candidate[j] = !s.protect[j];
  // One ranking per unit, deep enough for the largest budget; every budget takes a prefix
  // (nested top-k: kept sets grow monotonically with the budget).
#pragma omp parallel for schedule(dynamic)
  for (int u = 0; u < s.units; ++u) {
    i64 deepest = 0;
    for (const auto& c : counts) deepest = std::max(deepest, c.count[u] - s.n_protected);
    const std::vector<i64> rank = rank_unprotected(s.unit(u), s.protect.data(), s.n_c, deepest);
    for (std::size_t b = 0; b < counts.size(); ++b) {
      std::uint8_t* m = out[b].unit_mask(u);
      for (i64 j = 0; j < s.n_c; ++j) m[j] = s.protect[j];
      const i64 take = std::min<i64>(counts[b].count[u] - s.n_protected, static_cast<i64>(rank.size()));
      for (i64 r = 0; r < take; ++r) m[rank[r]] = 1;
      out[b].tied_at_cut[u] = ties_at_cut(s.unit(u), candidate.data(), m, s.n_c);
    }
  }
  return out;
}

namespace {

// A decode view's tokens evicted from one unit but kept by another (RuleInput::absent) rank
// below every present one, so no allocation or top-k brings them back; returns each unit's
// present count, the most it may keep.
std::vector<i64> rank_absent_last(const RuleInput& in, UnitScores& s) {
  std::vector<i64> present(s.units, s.n_c);
  if (!in.absent) return present;
  if (static_cast<i64>(in.absent->size()) != s.units * s.n_c)
    fail("decode view", "absent", "covers " + std::to_string(in.absent->size()) + " tokens, the rule scores " +
                                      std::to_string(s.units) + " units x " + std::to_string(s.n_c));
  const float lowest = s.log_space ? -INFINITY : -std::numeric_limits<float>::max();
  for (int u = 0; u < s.units; ++u)
    for (i64 j = 0; j < s.n_c; ++j)
      if ((*in.absent)[static_cast<std::size_t>(u * s.n_c + j)]) {
        s.unit(u)[j] = lowest;
        --present[u];
      }
  return present;
}

}  // namespace

std::vector<Selection> ScoredRule::select(const RuleInput& in, const std::vector<Budget>& budgets) const {
  UnitScores s = scores(in);
  const std::vector<i64> present = rank_absent_last(in, s);
  std::vector<UnitCounts> counts;
  std::vector<i64> layer_budgets;
  for (const auto& b : budgets) {
    if (b.kind == Budget::Kind::threshold) {  // DMS: every candidate scored >= the threshold
      if (!plain())
        fail(spec(), "budget " + b.text,
             "a threshold applies to a plain scorer or dms(...); " + wrapper_kind() + " allocates token counts");
      if (s.log_space)
        fail(spec(), "budget " + b.text, "scores are logs here (space=log): write the rule with space=linear");
      std::vector<i64> c(s.units, s.n_protected);
      for (int u = 0; u < s.units; ++u)
        for (i64 j = 0; j < s.n_c; ++j) c[u] += !s.protect[j] && s.unit(u)[j] >= b.value;
      i64 total = 0;
      for (i64 x : c) total += x;
      layer_budgets.push_back((total + s.units / 2) / s.units);  // the mean kept count, reported as budget
      counts.push_back({std::move(c), static_cast<double>(layer_budgets.back()), 0});
      continue;
    }
    const i64 B = b.tokens_for(in.n_c);
    const double exact = b.exact_tokens(in.n_c);
    const i64 lb = layer_budget(in, s, B, exact);
    layer_budgets.push_back(lb);
    std::vector<i64> c = unit_budgets(in, s, lb);
    for (int u = 0; u < s.units; ++u) {
      if (c[u] < s.n_protected)
        fail(spec(), "budget " + b.text,
             std::to_string(c[u]) + " kept tokens per " + (s.mode == GqaMode::kv ? "KV" : "query") + " head (layer " +
                 std::to_string(in.layer) + ") are fewer than the " + std::to_string(s.n_protected) +
                 " protected tokens (observation window / sinks); use a larger budget or a smaller window");
      c[u] = std::min(c[u], present[u]);  // Ada-KV can allot a head more than the span: keep all of it
    }
    counts.push_back({std::move(c), lb == B ? exact : static_cast<double>(lb), forced_per_unit(in, s, lb)});
  }
  std::vector<Selection> out = select_counts(in, s, counts);
  for (std::size_t b = 0; b < out.size(); ++b)
    if (budgets[b].kind == Budget::Kind::threshold || layer_budgets[b] != budgets[b].tokens_for(in.n_c))
      out[b].budget_tokens = layer_budgets[b];
  return out;
}

void check_threshold_budgets(const Rule& rule, const std::vector<Budget>& budgets) {
  for (const auto& b : budgets)
    if (b.kind == Budget::Kind::threshold && !rule.takes_threshold())
      fail(rule.spec(), "budget " + b.text,
           "a threshold keeps what a plain scorer rates at or above it; this rule chooses token counts (use a plain "
           "scorer or dms(...))");
}

std::vector<Selection> ScoredRule::select_planned(const RuleInput& in, std::size_t n_budgets) const {
  const auto& planned = require_plan(in, spec(), n_budgets);
  UnitScores s = scores(in);
  const std::vector<i64> present = rank_absent_last(in, s);
  std::vector<UnitCounts> counts;
  for (auto c : planned) {
    for (std::size_t u = 0; u < c.size() && u < present.size(); ++u) c[u] = std::min(c[u], present[u]);
    counts.push_back({c, std::accumulate(c.begin(), c.end(), 0.0) / static_cast<double>(c.size()), 0});
  }
  std::vector<Selection> out = select_counts(in, s, counts);
  for (std::size_t b = 0; b < out.size(); ++b) out[b].budget_tokens = std::llround(counts[b].exact);
  return out;
}

const std::vector<std::vector<i64>>& require_plan(const RuleInput& in, const std::string& spec,
                                                  std::size_t n_budgets) {
  if (!in.planned)
    fail(spec, "select", "allocates its budget across every layer of a run: replay it (kvsim replay, kvsim.replay), "
                         "which plans all layers before selecting one");
  if (in.planned->size() != n_budgets)
    fail(spec, "select", "planned for " + std::to_string(in.planned->size()) + " budgets, asked for " +
                             std::to_string(n_budgets));
  return *in.planned;
}

std::vector<i64> Rule::decode_counts(const std::vector<i64>& planned, i64, i64 nominal, i64 keep,
                                     const std::vector<i64>& held) const {
  std::vector<i64> out(planned.size());
  for (std::size_t u = 0; u < planned.size(); ++u) {
    const double share = nominal > 0 ? static_cast<double>(planned[u]) * static_cast<double>(keep) / nominal : 0.0;
    out[u] = std::min<i64>(std::llround(share), held[u < held.size() ? u : 0]);
  }
  return out;
}

std::unique_ptr<ScoredRule> require_scored(std::unique_ptr<Rule> base, const std::string& who) {
  auto* p = dynamic_cast<ScoredRule*>(base.get());
  if (!p) throw Error(who + ": base rule '" + base->spec() + "' does not produce per-token scores");
  base.release();
  return std::unique_ptr<ScoredRule>(p);
}

}  // namespace kvsim
