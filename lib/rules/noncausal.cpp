// noncausal: non-causal chunked attention (Compactor's query-side score; kvpress
// NonCausalAttnPress), rules doc 2.22. The span is cut into chunks of `chunk` tokens; inside a
// chunk every query attends to every key of the chunk (no causal mask, raw dot products q.k
// without the 1/sqrt(d) scale, float32 softmax), and a key's attention is summed over the chunk's
// queries. The last chunk is padded as kvpress pads it: padded keys get the logit -1e-9 (not
// -inf, so they take a share of every row) and padded query rows the logit 0 on real keys. The
// group mean of the query heads' sums, times ||v_j||_2, average-pooled with kernel 3, is the
// score (kvpress's z-normalisation over the layer does not change the ranking). Needs every
// query of the span stored. Nothing protected.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"
#include "rules/h2o_common.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class NonCausalRule : public ScoredRule {
 public:
  NonCausalRule(std::string spec, i64 chunk) : ScoredRule(std::move(spec)), chunk_(chunk) {}
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    rules_more::check_input(in, "noncausal");
    const auto rows = rules_more::require_q_rows(*in.meta, begin, end, "noncausal",
                                                 "every query of a chunk attends to every key of it");
    const LayerData& d = *in.data;
    const i64 n = end - begin, C = chunk_, dim = d.head_dim;
    const int G = d.num_heads / d.num_kv_heads;
    const i64 chunks = (n + C - 1) / C;
    UnitScores s(GqaMode::kv, d.num_kv_heads, n);
    std::vector<float> per_head(static_cast<std::size_t>(d.num_heads) * n, 0.0f);
#pragma omp parallel for schedule(dynamic) collapse(2)
    for (int h = 0; h < d.num_heads; ++h)
      for (i64 c = 0; c < chunks; ++c) {
        const i64 j0 = c * C, valid = std::min(C, n - j0);
        std::vector<float> q(static_cast<std::size_t>(C) * dim, 0.0f), k(static_cast<std::size_t>(C) * dim, 0.0f),
            logits(static_cast<std::size_t>(C) * C);
        for (i64 i = 0; i < valid; ++i) {
          std::copy_n(d.q_row(h, rows[j0 + i]), dim, q.begin() + i * dim);
          std::copy_n(d.k_row(h / G, begin + j0 + i), dim, k.begin() + i * dim);
        }
        for (i64 i = 0; i < C; ++i)
          for (i64 j = 0; j < C; ++j) {
            float x = 0;
            if (i < valid && j < valid)
              for (i64 e = 0; e < dim; ++e) x += q[i * dim + e] * k[j * dim + e];
            logits[i * C + j] = j >= valid ? -1e-9f : x;  // padded rows: 0 on real keys
          }
        float* sums = per_head.data() + static_cast<std::size_t>(h) * n + j0;
        for (i64 i = 0; i < C; ++i) {
          float* row = logits.data() + i * C;
          const float top = *std::max_element(row, row + C);
          float z = 0;
          for (i64 j = 0; j < C; ++j) z += row[j] = std::exp(row[j] - top);
          for (i64 j = 0; j < valid; ++j) sums[j] += row[j] / z;
        }
      }
    for (int g = 0; g < d.num_kv_heads; ++g) {
      std::vector<float> x(n);
      for (i64 j = 0; j < n; ++j) {
        float a = 0;
        for (int k = 0; k < G; ++k) a += per_head[static_cast<std::size_t>(g * G + k) * n + j];
        const float* v = d.v_row(g, begin + j);
        float sq = 0;
        for (i64 e = 0; e < dim; ++e) sq += v[e] * v[e];
        x[j] = a / static_cast<float>(G) * std::sqrt(sq);
      }
      kernels::avg_pool1d(x.data(), n, 3, s.unit(g));
    }
    return s;
  }

 private:
  i64 chunk_;
};

KVSIM_RULE((RuleInfo{"noncausal",
                     "non-causal chunked attention (kvpress NonCausalAttnPress, Compactor): attention inside chunks "
                     "without the causal mask, summed over the chunk's queries, group mean x ||v||, pooled (needs "
                     "every prompt query)",
                     {{"chunk", "int >= 1", "256", "chunk length"}},
                     /*in_all=*/false}),  // needs every prompt query stored
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const i64 chunk = r.get_int("chunk", 256, 1, 1 << 20);
             return std::make_unique<NonCausalRule>(r.canonical(), chunk);
           });

}  // namespace
}  // namespace kvsim
