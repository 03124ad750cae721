#pragma once
// A decode-protocol view (rules doc 1.9): the cache of one layer as it stands at a compression
// during generation, presented to a rule as a trace of its own. Its tokens are the ones each
// selection unit still holds (compacted, in position order) followed by the positions
// [L, E) the next interval generates (so rules that read evaluation queries, the oracles, see
// that interval's). Its queries are the stored queries of its tokens.
//   - every unit holds the same positions: one shared token list;
//   - the same count but different positions (per-head top-k): each unit's own list, as a
//     compacted per-head cache holds them (kv mode: a view KV head per unit; query mode: a view
//     KV head per query head, its group's keys repeated), and a token's queries are those of
//     its unit's position;
//   - different counts (Ada-KV, DuoAttention): the union of the units' tokens, with the tokens a
//     unit evicted marked absent (RuleInput::absent) so the rule cannot keep them; the rule's
//     own attention still sees them, the one approximation of the protocol.
// RuleInput::positions gives the model position of every view token for RoPE.
#include <memory>
#include <vector>

#include "core/selection.h"
#include "quant/quantized_kv.h"
#include "rules/rule.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

class LayerCache;

struct DecodeView {
  std::shared_ptr<const TraceMeta> meta;  // shared: the cache refers to it
  std::shared_ptr<const LayerData> data;
  i64 n_c = 0;                                 // tokens cached before L (the compressible span)
  std::vector<std::vector<i64>> positions;     // [view KV head][n_view] model positions
  std::vector<std::uint8_t> absent;            // [units][n_c] (the union case), else empty
  std::vector<i64> eval_rows, window_rows;     // view query rows at >= n_c, and the last `window` before it
  std::unique_ptr<LayerCache> cache;
  bool per_unit = false;                       // positions differ per view KV head

  DecodeView();
  ~DecodeView();
  DecodeView(DecodeView&&) noexcept;
  // The view's input for the rule (positions, absent and cache set).
  RuleInput input(int layer) const;
  // The model position of view token j for selection unit u.
  i64 position(int u, i64 j) const;
};

// cached[u]: the positions < L unit u holds (sorted), or a single list shared by every unit
// (mode is then irrelevant). Tokens [L, E) follow. window: the view's observation window.
// rows: what the cache gives back for positions below rows->n_c (ThinK's pruned keys, quant's
// codes from earlier cuts), per unit, or null: the view holds those rows, as a running cache
// does (a query-mode unit list shared by a group shows the group's first head's rows).
DecodeView make_decode_view(const TraceMeta& meta, const LayerData& data, const std::vector<std::vector<i64>>& cached,
                            GqaMode mode, i64 L, i64 E, int window, const QuantizedKV* rows = nullptr);

}  // namespace kvsim
