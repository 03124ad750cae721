#pragma once
// The decode protocol (rules doc 1.9): compression while generating, for any rule. The cache
// starts full at the compression point n_0 (or compressed there exactly as the one-shot protocol
// compresses it) and, every `every` positions after n_0, is cut back to the budget by the rule,
// which sees only the cache as it stands then (replay/decode_view.h): the tokens still cached,
// compacted, and the queries of those tokens. An evicted token never returns. Each evaluation
// query is measured against full attention over every token up to its position, its cache
// being what the compressions before it left plus every token since (Selection::per_query).
#include <memory>
#include <vector>

#include "core/selection.h"
#include "quant/quantized_kv.h"
#include "rules/budget.h"
#include "rules/rule.h"

namespace kvsim {

struct DecodeOptions {
  i64 every = 0;                  // positions between compressions; 0 = the one-shot protocol
  bool start_compressed = false;  // compress at n_0 too (kvpress PrefillDecodingPress), else start full (DecodingPress)
  int window = 32;                // the view's observation window (LayerCache window rows)
  // Append-only admission (kvpress #257): nothing cached leaves after n_0; at each compression
  // the tokens generated since the last one enter only where the rule's cut to the budget keeps
  // them, i.e. where they score above the lowest token the budget keeps.
  bool append_only = false;
};

// What the compressions of one (rule, budget, layer) did, for summary.json.
struct DecodeStats {
  i64 compressions = 0;        // rule calls after n_0 that cut the cache
  double cache_tokens_sum = 0; // over evaluation queries and units: tokens the query's cache held
  i64 cache_tokens_count = 0;  // evaluation queries x units
  double mean_cache_tokens() const { return cache_tokens_count ? cache_tokens_sum / cache_tokens_count : 0; }
};

struct DecodeView;

// What one compression left: each unit's cached positions (one shared list when nothing was cut
// yet), the rule's GQA mode and, for a step-wise rule, its per-query masks over the view.
// ThinK: each unit's key-channel mask ([units][d], empty otherwise), applied to every key the
// unit holds at the cut. quant(...): the rows the cut's quantized cache gives back, by position
// ([units][L], coded flags set), or null.
struct DecodeCut {
  GqaMode mode = GqaMode::kv;
  std::vector<std::vector<i64>> cached;
  bool cut = false;                           // false: every unit held no more than the budget
  std::shared_ptr<const Selection> stepwise;  // per_query over view's evaluation queries, or null
  std::shared_ptr<const DecodeView> view;
  std::vector<std::uint8_t> key_channels;
  std::shared_ptr<const QuantizedKV> quant;
};

// The rows the cache gives back after a cut at L (Selection::HeldCache::rows): per unit and held
// position, ThinK's key with the cut's pruned channels zeroed on top of what earlier cuts pruned;
// quant's codes for a token quantized at this cut or before (a token keeps the codes it got at
// the first cut that quantized it), the trace's row for one in full precision. `prev`: the rows
// before the cut (null: the trace's). Null when neither applies.
std::shared_ptr<const QuantizedKV> held_rows_after(const QuantizedKV* prev, const DecodeCut& cut, const LayerData& data,
                                                   i64 L);

// One compression of the decode protocol at sequence length L: `cached` (per unit, or one list)
// plus nothing else is the cache; the rule cuts it to `keep` tokens per unit (-1: `budget` is a
// threshold the rule applies) seeing the view of replay/decode_view.h, whose tokens [L, E)
// follow (E = L in a running model). Throws kvsim::Error naming the rule, position and layer.
// planned: a cross-layer rule's per-unit counts for this cut (Rule::decode_counts), else null.
// rows: what the cache gives back from earlier cuts (ThinK, quant), which the view holds; null:
// `data`'s rows are the cache's (a running model's own cache).
DecodeCut decode_cut(const Rule& rule, const TraceMeta& meta, const LayerData& data,
                     const std::vector<std::vector<i64>>& cached, GqaMode mode, i64 L, i64 E, const Budget& budget,
                     i64 keep, int window, int layer, const std::vector<i64>* planned = nullptr,
                     const QuantizedKV* rows = nullptr);

// The tokens per unit a compression at sequence length L keeps under `budget`: a fraction or
// kvpress's cr of the L tokens seen so far, or the token count; -1 for a threshold.
i64 decode_keep(const Budget& budget, i64 L);

// The rule's selection for every budget of `in` (the one-shot input: n_c = n_0, eval_rows the
// evaluation queries) under the decode protocol: each evaluation query's cache is
// Selection::query_mask (held_caches, one per compression; per_query for step-wise rules); kept
// holds the tokens of [0, n_0) still cached at the last evaluation query.
// `stats` (may be null) gets one entry per budget. Throws kvsim::Error naming the rule, the
// budget and the decode step.
std::vector<Selection> decode_select(const Rule& rule, const RuleInput& in, const std::vector<Budget>& budgets,
                                     const DecodeOptions& opt, std::vector<DecodeStats>* stats = nullptr);

}  // namespace kvsim
