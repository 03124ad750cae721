#pragma once
// Budgets (rules doc 1.4): a kept fraction of the compressed span ("0.2", "20%"), kvpress's
// compression ratio ("cr=0.8": keep int(n_c * (1 - 0.8)) tokens, computed exactly as kvpress
// does), or a number of kept tokens per head ("512"). Rules resolve them per layer; the effective
// kept count is always reported next to the nominal one. Per-layer budgets ("layers=0.3/0.2/...",
// "layers=cr:0.5/0.7/...", kvpress's PerLayerCompressionPress) give every layer its own fraction
// or ratio; the replay hands each layer's rules the plain budget of that layer (for_layer).
#include <string>
#include <vector>

#include "core/types.h"

namespace kvsim {

struct Budget {
  // memory ("mem=0.25"): at most that share of the float16 full cache's bytes. A float16 kept
  // token costs the same bytes everywhere, so for an eviction rule it is the kept fraction;
  // quant(...) turns it into the largest kept count whose quantized bytes fit (rules doc 2.33).
  enum class Kind { fraction, compression_ratio, tokens, threshold, memory };
  Kind kind = Kind::fraction;
  double value = 0.0;  // kept fraction, compression ratio, token count, or score threshold
  std::string text;    // as the user wrote it; used as the "budget" column
  // Per-layer budgets: the fraction or ratio of each layer (value = their mean, as kvpress's
  // PerLayerCompressionPress.compression_ratio); empty for a budget of every layer.
  std::vector<double> per_layer;

  // "0.2" / "20%" -> fraction in (0, 1]; "cr=0.8" -> compression ratio in [0, 1); "512" (integer
  // >= 1, at most 2^53) -> tokens; "layers=F0/F1/..." (fractions) or "layers=cr:R0/R1/..."
  // (ratios) -> per layer; "thr=X" -> keep every candidate scored >= X (DMS; plain scorers only:
  // ScoredRule::select counts them, and the count functions below throw for it). Throws
  // kvsim::Error naming the budget.
  static Budget parse(const std::string& s);
  // The plain budget of one layer (this budget itself when it is not per-layer), same text.
  // Throws naming the budget when it lists fewer layers.
  Budget for_layer(int layer) const;
  // Throws naming the budget unless it is plain or lists exactly num_layers layers.
  void check_layers(int num_layers) const;
  // Kept share of a span of n_c tokens, as a real number: f, 1 - cr, or tokens / n_c.
  double kept_fraction(i64 n_c) const;
  // Kept tokens before rounding: f * n_c, n_c * (1 - cr) (kvpress's float), or the token count.
  // PyramidKV's float schedule and CriticalKV's first stage start from this value.
  double exact_tokens(i64 n_c) const;
  // Nominal per-head kept tokens of n_c compressible tokens: floor(f * n_c) (at least 1) for a
  // fraction, kvpress's max(1, int(n_c * (1 - cr))) for a ratio, the count for tokens. Throws if
  // a token count exceeds n_c.
  i64 tokens_for(i64 n_c) const;
  // The same share of a part of n of the span's items (a chunk, or chunks): at least 1. With a
  // compression ratio exactly kvpress's max(1, int(n * (1 - cr))).
  i64 share_of(i64 n, i64 n_c) const;
  // The share of `items` items in each of the layers, for an allocation across them: share_of
  // their L x items for a budget of every layer, the sum of each layer's share for a per-layer
  // budget (rules doc 1.4 "Across layers").
  i64 share_across(const std::vector<int>& layers, i64 items, i64 n_c) const;
};

// The budgets of a comma-separated list, each once: a budget equal to an earlier one (same kind
// and value: "0.2,20%", "0.2,0.2") is dropped, its text added to *merged when given.
std::vector<Budget> parse_budgets(const std::string& comma_separated, std::vector<std::string>* merged = nullptr);
// "" or the note a command prints when the list repeats a budget ("--budgets: 20% repeats an
// earlier budget; each budget is replayed once").
std::string repeated_budgets_note(const std::string& comma_separated);

}  // namespace kvsim
