#pragma once
// What a rule decides for one layer and one budget: which compressible tokens [0, n_c) each
// selection unit keeps. Units are KV heads (GQA "kv" mode: one kept set shared by the group)
// or query heads ("query" mode: repeat_kv before compression).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/types.h"

namespace kvsim {

enum class GqaMode { kv, query };
struct QuantizedKV;  // quant/quantized_kv.h
const char* gqa_mode_name(GqaMode m);

struct Selection {
  GqaMode mode = GqaMode::kv;
  int units = 0;
  i64 n_c = 0;
  std::vector<std::uint8_t> kept;  // [units][n_c], 1 = kept

  // Step-wise rules (H2O step-wise, TOVA step-wise, Quest) decide per evaluation query:
  // per_query[u * n_eval + qi] is a mask over positions [0, t_qi] (length t_qi + 1).
  // Empty for one-shot rules: then positions [n_c, t] are always kept.
  std::vector<std::vector<std::uint8_t>> per_query;

  // The decode protocol's compact form of per_query (replay/decode_protocol.h): evaluation query
  // qi's cache is held_caches[held_of[qi]] (per unit, which positions of [0, from) it still
  // holds: [units][from]) plus every position in [from, t_qi]. One entry per compression, not
  // per query: a long generation on a long context stays small. Empty otherwise.
  // `rows`: what this cache gives back for [0, from) instead of the trace's rows (ThinK's
  // pruned keys, quant(...)'s codes), null for the trace's own.
  struct HeldCache {
    i64 from = 0;
    std::vector<std::uint8_t> held;  // [units][from]
    std::shared_ptr<const QuantizedKV> rows;
  };
  std::vector<HeldCache> held_caches;
  std::vector<int> held_of;  // [n_eval]

  // Key-channel pruning (ThinK): [num_kv_heads][head_dim], 1 = channel kept; empty = all kept.
  // When set, attention of every evaluation query is recomputed with the pruned keys.
  std::vector<std::uint8_t> key_channels;

  // quant(...): the kept span's rows as the quantized cache gives them back, and its bytes;
  // null for a float16 cache of the kept tokens.
  std::shared_ptr<const QuantizedKV> quant;

  // Per unit, the bytes of the kept span when the decode protocol's quantized cache holds it
  // (its coded and full-precision rows); empty: quant's bytes, else float16 keys and values.
  std::vector<double> kept_bytes;

  // The rule's per-unit budget for this layer when it differs from the nominal one
  // (Budget::tokens_for(n_c)), e.g. pyramid's layer schedule; -1 = the nominal budget.
  i64 budget_tokens = -1;

  // Per unit: how many candidates share the score of the last token kept when that score is
  // also the score of an evicted one (the cut falls inside a tie, so the kept set depends on tie
  // order: position here, unspecified in torch.topk); 0 for a clean cut. Empty when the rule
  // does not rank by scores.
  std::vector<i64> tied_at_cut;

  Selection() = default;
  Selection(GqaMode m, int n_units, i64 span) : mode(m), units(n_units), n_c(span), kept(n_units * span, 0) {}
  std::uint8_t* unit_mask(int u) { return kept.data() + u * n_c; }
  const std::uint8_t* unit_mask(int u) const { return kept.data() + u * n_c; }
  i64 kept_count(int u) const;      // tokens kept in [0, n_c) by unit u
  // Whether evaluation queries have masks of their own (per_query or held_caches).
  bool has_query_masks() const { return !per_query.empty() || !held_caches.empty(); }
  // Whether some held cache gives back rows of its own (the decode protocol's ThinK or quant).
  bool held_rows() const;
  // Unit u's mask over [0, t] for evaluation query qi (t its position) from per_query or
  // held_caches; requires has_query_masks().
  void query_mask(int u, i64 qi, i64 t, std::vector<std::uint8_t>& m) const;
  double mean_kept_count() const;   // over units
};

}  // namespace kvsim
