#include "rules/quest.h"

#include <algorithm>
#include <limits>

#include "kernels/kernels.h"
#include "rules/h2o_common.h"
#include "rules/registry.h"

namespace kvsim {

namespace {

void page_minmax(const float* keys, int d, i64 first, i64 last, float* mx, float* mn) {
  std::fill(mx, mx + d, -std::numeric_limits<float>::infinity());
  std::fill(mn, mn + d, std::numeric_limits<float>::infinity());
  for (i64 j = first; j <= last; ++j)
    for (int c = 0; c < d; ++c) {
      mx[c] = std::max(mx[c], keys[j * d + c]);
      mn[c] = std::min(mn[c], keys[j * d + c]);
    }
}

float page_score(const float* q, const float* mx, const float* mn, int d) {
  float u = 0;
  for (int c = 0; c < d; ++c) u += std::max(q[c] * mx[c], q[c] * mn[c]);
  return u;
}

}  // namespace

PageBounds quest_page_bounds(const float* keys, int d, i64 n, i64 page) {
  PageBounds b;
  b.page = page;
  b.n_full = n / page;
  b.max.resize(static_cast<std::size_t>(b.n_full * d));
  b.min.resize(static_cast<std::size_t>(b.n_full * d));
  for (i64 p = 0; p < b.n_full; ++p)
    page_minmax(keys, d, p * page, p * page + page - 1, b.max.data() + p * d, b.min.data() + p * d);
  return b;
}

std::vector<float> quest_page_scores(const float* q, const float* keys, int d, i64 t, i64 page,
                                     const PageBounds* bounds) {
  const i64 n_pages = t / page + 1;
  std::vector<float> score(static_cast<std::size_t>(n_pages));
  std::vector<float> mx(static_cast<std::size_t>(d)), mn(static_cast<std::size_t>(d));
  for (i64 p = 0; p < n_pages; ++p) {
    const i64 last = std::min(t, p * page + page - 1);
    if (bounds && last == p * page + page - 1 && p < bounds->n_full) {
      score[p] = page_score(q, bounds->max.data() + p * d, bounds->min.data() + p * d, d);
    } else {
      page_minmax(keys, d, p * page, last, mx.data(), mn.data());
      score[p] = page_score(q, mx.data(), mn.data(), d);
    }
  }
  return score;
}

std::vector<std::uint8_t> quest_mask(const std::vector<float>& page_score, i64 t, i64 page, i64 n_pages) {
  std::vector<std::uint8_t> page_keep(page_score.size(), 0);
  kernels::topk_mask(page_score.data(), static_cast<i64>(page_score.size()), n_pages, page_keep.data());
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(t + 1), 0);
  for (i64 j = 0; j <= t; ++j) mask[j] = page_keep[j / page];
  return mask;
}

namespace {

class QuestRule : public Rule {
 public:
  QuestRule(std::string spec, i64 page, i64 min_pages, int dense_layers, GqaChoice gqa)
      : spec_(std::move(spec)), page_(page), min_pages_(min_pages), dense_layers_(dense_layers), gqa_(gqa) {}
  std::string spec() const override { return spec_; }
  bool per_query_evicts() const override { return false; }  // pages are picked, nothing leaves

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    rules_more::check_input(in, "quest");
    const LayerData& D = *in.data;
    const int G = D.num_heads / D.num_kv_heads, d = D.head_dim, units = rules_more::gqa_units(gqa_, D);
    const int heads_per_unit = gqa_.mode == GqaMode::kv ? G : 1;
    const std::vector<i64> ev = rules_more::eval_positions(in);
    const i64 n_eval = static_cast<i64>(ev.size());
    std::vector<Selection> out;
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      // No eviction: every prompt token stays in memory; only the attention is sparse.
      Selection sel(gqa_.mode, units, in.n_c);
      std::fill(sel.kept.begin(), sel.kept.end(), 1);
      if (in.layer >= dense_layers_) sel.per_query.resize(static_cast<std::size_t>(units * n_eval));
      out.push_back(std::move(sel));
    }
    if (in.layer < dense_layers_) return out;
    std::vector<PageBounds> bounds;
    for (int g = 0; g < D.num_kv_heads; ++g) bounds.push_back(quest_page_bounds(D.k_head(g), d, D.seq_len, page_));
#pragma omp parallel for schedule(dynamic) collapse(2)
    for (int u = 0; u < units; ++u)
      for (i64 qi = 0; qi < n_eval; ++qi) {
        const i64 t = ev[qi];
        const float* keys = D.k_head(rules_more::unit_kv_head(gqa_, u, G));
        const int h0 = gqa_.mode == GqaMode::kv ? u * G : u;
        std::vector<float> per_head;
        for (int k = 0; k < heads_per_unit; ++k) {
          const auto s = quest_page_scores(D.q_row(h0 + k, in.eval_rows[qi]), keys, d, t, page_,
                                           &bounds[rules_more::unit_kv_head(gqa_, u, G)]);
          per_head.insert(per_head.end(), s.begin(), s.end());
        }
        const i64 n_pages = t / page_ + 1;
        std::vector<float> score(static_cast<std::size_t>(n_pages));
        kernels::group_reduce(per_head.data(), heads_per_unit, n_pages, n_pages, gqa_.op, score.data());
        for (std::size_t b = 0; b < budgets.size(); ++b) {
          const i64 K = std::min(std::max(min_pages_, budgets[b].tokens_for(in.n_c) / page_), n_pages);
          out[b].per_query[static_cast<std::size_t>(u * n_eval + qi)] = quest_mask(score, t, page_, K);
        }
      }
    return out;
  }

 private:
  std::string spec_;
  i64 page_, min_pages_;
  int dense_layers_;
  GqaChoice gqa_;
};

RuleInfo quest_info() {
  return {"quest",
          "Quest: per evaluation query, attend to the top pages by the channel min/max upper bound of q.k; "
          "no eviction",
          {{"page", "int", "16", "tokens per page"},
           {"min_pages", "int", "3", "pages always selected at least"},
           {"dense_layers", "int", "2", "layers below this index attend densely (reference code: 0 and 1)"},
           {"gqa", "choice mean|max|sum|query", "query", "one page choice per query head, or reduced per KV head"}}};
}

std::unique_ptr<Rule> build_quest(SpecReader& r) {
  const i64 page = r.get_int("page", 16, 1, 1LL << 30);
  const i64 min_pages = r.get_int("min_pages", 3, 1, 1LL << 40);
  const int dense = static_cast<int>(r.get_int("dense_layers", 2, 0, 1 << 20));
  const GqaChoice gqa = read_gqa(r, "query");
  return std::make_unique<QuestRule>(r.canonical(), page, min_pages, dense, gqa);
}

KVSIM_RULE(quest_info(), build_quest);

}  // namespace
}  // namespace kvsim
