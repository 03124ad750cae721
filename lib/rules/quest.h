#pragma once
// Quest (rules doc 2.15): query-aware page SELECTION; nothing is evicted. For every evaluation query
// t the cache [0, t] is cut into pages of `page` tokens (the last one partial); page p scores
//   U_p = sum_c max(q_c M_pc, q_c m_pc)   (M/m = channel max/min of the page's keys),
// an upper bound of q.k over the page; the query attends exactly to the tokens of the top
// K = min(max(min_pages, budget / page), #pages) pages. Query-head mode by default (keys
// repeated); gqa=mean|max|sum reduces the group's page scores into one choice per KV head.
// Layers below dense_layers attend densely (the reference code skips layers 0 and 1).
#include <vector>

#include "core/types.h"

namespace kvsim {

// Channel max/min of every whole page of keys [0, n) of one KV head: [n / page][d] each.
struct PageBounds {
  i64 page = 16, n_full = 0;
  std::vector<float> max, min;
};
PageBounds quest_page_bounds(const float* keys, int d, i64 n, i64 page);

// Page scores of query q over the keys [0, t] of one KV head (rows of a [*, d] matrix); whole
// pages come from `bounds` when given, the partial last page is computed here.
std::vector<float> quest_page_scores(const float* q, const float* keys, int d, i64 t, i64 page,
                                     const PageBounds* bounds = nullptr);
// Token mask over [0, t] of the top n_pages pages (ties: lower page).
std::vector<std::uint8_t> quest_mask(const std::vector<float>& page_score, i64 t, i64 page, i64 n_pages);

}  // namespace kvsim
