#pragma once
// CritiPrefill parameters (selection-rules.md 2.16). Defaults are the reference criti_config():
// segment 512, block 32, budget 2048 (K = 64 blocks), threshold 4096, layer_skip 1, fusion on.
#include <string>

#include "core/types.h"

namespace kvsim::prefill {

struct PrefillConfig {
  i64 segment = 512;     // S: query segment length (a multiple of block)
  i64 block = 32;        // bs: key block length
  i64 budget = 2048;     // kept past keys per segment; K = budget / block blocks
  i64 threshold = 4096;  // segments starting before this position run dense
  int layer_skip = 1;    // layers with index < layer_skip run dense
  bool fusion = true;    // layer fusion of criticality maps (0.25 previous + 0.75 current)

  i64 top_k() const { return budget / block; }
  i64 blocks_per_segment() const { return segment / block; }  // r
  // Throws kvsim::Error naming the offending option (as the CLI spells it).
  void validate() const;
  std::string describe() const;  // "segment=512,block=32,..." for outputs
};

}  // namespace kvsim::prefill
