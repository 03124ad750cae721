#include "rules/h2o.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"
#include "rules/window_attention.h"

namespace kvsim {

std::vector<double> prompt_attention_column_sums(const LayerData& data, const std::vector<i64>& rows, i64 begin,
                                                 i64 end, const kernels::LogitSpec& logit) {
  const int H = data.num_heads, d = data.head_dim, G = data.num_heads / data.num_kv_heads;
  const i64 n = end - begin;
  std::vector<double> out(static_cast<std::size_t>(H * n), 0.0);
  const i64 block = 64;  // query rows per GEMM: block x n logits per thread at most
#pragma omp parallel
  {
    avec<float> qblk(static_cast<std::size_t>(block * d));
    avec<float> logits(static_cast<std::size_t>(block * n));
    avec<float> block_sum(static_cast<std::size_t>(n));
#pragma omp for schedule(dynamic)
    for (int h = 0; h < H; ++h) {
      double* col = out.data() + static_cast<i64>(h) * n;
      const float* keys = data.k_row(h / G, begin);
      for (i64 t0 = 0; t0 < n; t0 += block) {
        const i64 b = std::min(block, n - t0), width = t0 + b;  // causal: keys [0, t0 + b)
        for (i64 i = 0; i < b; ++i) std::copy_n(data.q_row(h, rows[t0 + i]), d, qblk.data() + i * d);
        kernels::sgemm(false, true, b, width, d, 1.0f, qblk.data(), d, keys, d, 0.0f, logits.data(), width);
        // Sum the block's rows in float32 (at most `block` terms), then add to the float64 total.
        std::fill_n(block_sum.data(), width, 0.0f);
        for (i64 i = 0; i < b; ++i) {
          const i64 t = t0 + i;
          float* row = logits.data() + i * width;
          kernels::logit_softmax_inplace(row, t + 1, logit);
          float* acc = block_sum.data();
          for (i64 j = 0; j <= t; ++j) acc[j] += row[j];
        }
        for (i64 j = 0; j < width; ++j) col[j] += block_sum[j];
      }
    }
  }
  return out;
}

Selection h2o_stepwise(const RuleInput& in, const GqaChoice& gqa, const std::vector<double>& unit_scores, i64 heavy,
                       i64 recent) {
  const LayerData& D = *in.data;
  const i64 n_c = in.n_c;
  const int units = rules_more::gqa_units(gqa, D), G = D.num_heads / D.num_kv_heads, d = D.head_dim;
  const int heads_per_unit = gqa.mode == GqaMode::kv ? G : 1;
  const i64 cap = std::max<i64>(1, heavy + recent);
  const kernels::LogitSpec logit = in.meta->logits();
  const std::vector<i64> ev = rules_more::eval_positions(in);
  const i64 n_eval = static_cast<i64>(ev.size());
  std::vector<i64> order(ev.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return ev[a] < ev[b]; });
  const i64 last = ev.empty() ? n_c - 1 : std::max(n_c - 1, *std::max_element(ev.begin(), ev.end()));

  Selection sel(gqa.mode, units, n_c);
  sel.per_query.resize(static_cast<std::size_t>(units * n_eval));
#pragma omp parallel for schedule(dynamic)
  for (int u = 0; u < units; ++u) {
    std::vector<double> s(static_cast<std::size_t>(last + 1), 0.0);
    std::copy_n(unit_scores.data() + u * n_c, n_c, s.begin());
    // Prefill compression (real-drop H2O): the last `recent` prompt tokens plus the best
    // `heavy` older ones by accumulated score.
    std::vector<i64> present;
    if (n_c <= cap) {
      present.resize(static_cast<std::size_t>(n_c));
      std::iota(present.begin(), present.end(), 0);
    } else {
      const i64 ws = n_c - std::min(recent, cap);
      std::vector<i64> older(static_cast<std::size_t>(ws));
      std::iota(older.begin(), older.end(), 0);
      present = rules_more::top_positions(older, s, cap - (n_c - ws));
      for (i64 j = ws; j < n_c; ++j) present.push_back(j);
    }
    for (i64 j : present) sel.unit_mask(u)[j] = 1;

    const int h0 = gqa.mode == GqaMode::kv ? u * G : u;
    const float* keys = D.k_head(rules_more::unit_kv_head(gqa, u, G));
    std::vector<float> probs, reduced;
    i64 next_new = n_c;
    for (i64 qi : order) {
      const i64 t = ev[qi];
      for (i64 p = next_new; p <= t; ++p) present.push_back(p);  // new tokens start at score 0
      next_new = std::max(next_new, t + 1);
      // Recent window (always holds the current token), then the best older tokens.
      const i64 ws = std::max<i64>(0, t - std::max<i64>(recent, 1) + 1);
      std::vector<i64> older, window;
      for (i64 j : present) (j < ws ? older : window).push_back(j);
      std::vector<i64> mask =
          rules_more::top_positions(older, s, std::max<i64>(0, cap - static_cast<i64>(window.size())));
      mask.insert(mask.end(), window.begin(), window.end());
      const i64 m = static_cast<i64>(mask.size());
      // The attention this query pays to the tokens it sees feeds the running scores.
      probs.resize(static_cast<std::size_t>(heads_per_unit * m));
      reduced.resize(static_cast<std::size_t>(m));
      for (int k = 0; k < heads_per_unit; ++k)
        rules_more::subset_probs(D.q_row(h0 + k, in.eval_rows[qi]), keys, d, mask.data(), m, logit,
                                 probs.data() + k * m);
      kernels::group_reduce(probs.data(), heads_per_unit, m, m, gqa.op, reduced.data());
      for (i64 i = 0; i < m; ++i) s[mask[i]] += reduced[i];
      auto& q_mask = sel.per_query[static_cast<std::size_t>(u * n_eval + qi)];
      q_mask.assign(static_cast<std::size_t>(t + 1), 0);
      for (i64 j : mask) q_mask[j] = 1;
      present = std::move(mask);  // everything else is evicted for good
    }
  }
  return sel;
}

namespace {

std::vector<double> column_sums(const RuleInput& in, i64 begin, i64 end) {
  rules_more::check_input(in, "h2o");
  const auto rows = rules_more::require_q_rows(*in.meta, begin, end, "h2o",
                                               "it sums the attention paid by every prompt query");
  return prompt_attention_column_sums(*in.data, rows, begin, end, in.meta->logits());
}

// One-shot variants: per-token scores, so they compose with pyramid/ada/critical/chunk.
class H2oOneShot : public ScoredRule {
 public:
  H2oOneShot(std::string spec, bool normalise, i64 window, GqaChoice gqa)
      : ScoredRule(std::move(spec)), normalise_(normalise), window_(window), gqa_(gqa) {}
  bool attention_like() const override { return true; }

  // Every prompt query's attention row (defensive(h2o)); factory's protected window is not scored.
  bool has_query_rows() const override { return true; }
  QueryScoreRows query_rows(const RuleInput& in, i64 begin, i64 end) const override {
    const i64 n = end - begin;
    const i64 m = normalise_ ? n : n - std::min(n, window_);
    return attention_query_rows(in, begin, 0,
                                rules_more::require_q_rows(*in.meta, begin, end, "h2o",
                                                           "it sums the attention paid by every prompt query"),
                                m);
  }

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const LayerData& D = *in.data;
    const std::vector<double> colsum = column_sums(in, begin, end);
    const i64 n = end - begin;
    const int H = D.num_heads, G = H / D.num_kv_heads;
    std::vector<float> head_scores(static_cast<std::size_t>(H * n));
    for (int h = 0; h < H; ++h)
      for (i64 j = 0; j < n; ++j) {
        const double c = colsum[h * n + j];
        head_scores[h * n + j] = static_cast<float>(normalise_ ? c / static_cast<double>(n - j) : c);
      }
    UnitScores s(gqa_.mode, rules_more::gqa_units(gqa_, D), n);
    reduce_heads(head_scores.data(), H, G, n, n, gqa_, s.score.data(), n);
    if (!normalise_) s.protect_range(std::max<i64>(0, n - window_), n);
    return s;
  }

 private:
  bool normalise_;
  i64 window_;
  GqaChoice gqa_;
};

class H2oStepwise : public Rule {
 public:
  H2oStepwise(std::string spec, double heavy, double recent, GqaChoice gqa)
      : spec_(std::move(spec)), heavy_(heavy), recent_(recent), gqa_(gqa) {}
  std::string spec() const override { return spec_; }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    const i64 n_c = in.n_c;
    const std::vector<double> colsum = column_sums(in, 0, n_c);
    const LayerData& D = *in.data;
    const int G = D.num_heads / D.num_kv_heads, units = rules_more::gqa_units(gqa_, D);
    const int nh = gqa_.mode == GqaMode::kv ? G : 1;
    std::vector<double> unit_scores(static_cast<std::size_t>(units * n_c));
    for (int u = 0; u < units; ++u) {
      const int h0 = gqa_.mode == GqaMode::kv ? u * G : u;
      for (i64 j = 0; j < n_c; ++j) {
        double acc = colsum[h0 * n_c + j];
        for (int k = 1; k < nh; ++k) {
          const double x = colsum[(h0 + k) * n_c + j];
          acc = gqa_.op == kernels::GroupOp::max ? std::max(acc, x) : acc + x;
        }
        unit_scores[u * n_c + j] = gqa_.op == kernels::GroupOp::mean ? acc / nh : acc;
      }
    }
    std::vector<Selection> out;
    for (const Budget& b : budgets) {
      const i64 N = b.tokens_for(n_c);
      const i64 cap = static_cast<i64>((heavy_ + recent_) * static_cast<double>(N) + 1e-9);
      const i64 recent = std::min(cap, static_cast<i64>(recent_ * static_cast<double>(N) + 1e-9));
      out.push_back(h2o_stepwise(in, gqa_, unit_scores, cap - recent, recent));
    }
    return out;
  }

 private:
  std::string spec_;
  double heavy_, recent_;
  GqaChoice gqa_;
};

RuleInfo h2o_info() {
  return {"h2o",
          "heavy hitters: prompt attention column sums (kvpress normalised, Factory raw + window, or the "
          "original step-wise heavy+recent cache)",
          {{"variant", "choice kvpress|factory|stepwise", "kvpress",
            "kvpress: column sum / (n_c - j), one-shot; factory: raw column sum, window protected; "
            "stepwise: running scores updated by each evaluation query (per-query masks)"},
           {"window", "int", "8", "factory: last prompt tokens protected inside the budget"},
           {"heavy", "double", "0.5", "stepwise: share of the budget for heavy hitters"},
           {"recent", "double", "0.5", "stepwise: share of the budget for the newest tokens"},
           {"gqa", "choice mean|max|sum|query", "mean (query for stepwise)", "group reduction, or one set per query head"}},
          /*in_all=*/false};  // needs the query of every prompt position
}

std::unique_ptr<Rule> build_h2o(SpecReader& r) {
  const std::string variant = r.get_choice("variant", "kvpress", {"kvpress", "factory", "stepwise"});
  const i64 window = r.get_int("window", 8, 0, 1LL << 40);
  const double heavy = r.get_double("heavy", 0.5, 0.0, 1.0);
  const double recent = r.get_double("recent", 0.5, 0.0, 1.0);
  if (heavy + recent > 1.0 + 1e-12) r.error("heavy + recent must not exceed 1 (they are shares of the budget)");
  const GqaChoice gqa = read_gqa(r, variant == "stepwise" ? "query" : "mean");
  if (variant == "stepwise") return std::make_unique<H2oStepwise>(r.canonical(), heavy, recent, gqa);
  return std::make_unique<H2oOneShot>(r.canonical(), variant == "kvpress", window, gqa);
}

KVSIM_RULE(h2o_info(), build_h2o);

}  // namespace
}  // namespace kvsim
