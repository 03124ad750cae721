#pragma once
// Budgets (spec 1.4): a kept fraction of the compressed span ("0.2", "20%") or an average
// number of kept tokens per head ("512"). Rules resolve them per layer; the effective kept
// count is always reported next to the nominal one.
#include <string>
#include <vector>

#include "core/types.h"

namespace kvsim {

struct Budget {
  enum class Kind { fraction, tokens };
  Kind kind = Kind::fraction;
  double value = 0.0;
  std::string text;  // as the user wrote it; used as the "budget" column

  // "0.2" or "20%" -> fraction in (0, 1]; "512" (integer >= 1) -> tokens. Throws kvsim::Error.
  static Budget parse(const std::string& s);
  // Nominal per-head kept tokens of a span of n_c compressible tokens: floor(value * n_c) for a
  // fraction (at least 1), value for tokens. Throws if tokens > n_c.
  i64 tokens_for(i64 n_c) const;
};

std::vector<Budget> parse_budgets(const std::string& comma_separated);

}  // namespace kvsim
