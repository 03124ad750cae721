#pragma once
// Synthetic traces with the structure real attention has, for tests, benchmarks and demos
// without a GPU: attention sinks at the first tokens, local recency (a shared pre-RoPE component
// that RoPE turns into a distance-decaying kernel), sparse heavy-hitter tokens, a planted needle
// span that retrieval heads attend to from question/generated queries (/spans/needle), outlier
// key channels, heterogeneous value norms and per-head differences in concentration.
//
// Every value is a pure function of (seed, layer, head, position, channel) through a
// counter-based hash, so the output does not depend on the thread count or on write order.
#include <cstdint>
#include <functional>
#include <string>

#include "trace/layer_data.h"
#include "trace/trace_meta.h"
#include "trace/trace_writer.h"

namespace kvsim {

struct SynthOptions {
  // Model shape (defaults: Llama-3.1-8B).
  int num_layers = 32, num_heads = 32, num_kv_heads = 8, head_dim = 128, hidden_size = 4096;
  double rope_theta = 500000.0;
  RopeStyle rope_style = RopeStyle::half;
  // Positions: seq_len = context + question + generated.
  i64 seq_len = 8192, question_len = 64, gen_len = 64;
  // Stored queries: the last `window` context positions + every question/generated position,
  // or every position (all_queries).
  bool all_queries = false;
  int window = 256;
  bool o_proj = true;
  std::uint64_t seed = 0;

  // Structure knobs (logit units unless said otherwise).
  int num_sinks = 4;
  double sink_logit = 10.0;            // sink key boost for a query head of full sink affinity
  double heavy_hitter_rate = 0.02;     // fraction of context tokens that are heavy hitters
  double heavy_hitter_logit = 4.0;     // mean boost (uniform in [0.5, 1.5] x this per token)
  double content_sigma = 0.8;          // per-channel std of the random content of q and k
  double locality_logit = 8.0;         // locality kernel at distance 0 for a fully local head
  double retrieval_head_rate = 0.15;   // fraction of query heads (layers >= 1) that retrieve the needle
  i64 needle_len = 16;
  int outlier_channels = 3;            // per KV head
  double value_norm_sigma = 0.5;       // log-normal spread of value norms across tokens
};

// Throws kvsim::Error("synth: <option>: <what>") for an impossible configuration.
void check_synth_options(const SynthOptions& opt);
// Root metadata (positions, segments, q_pos, spans) of the synthetic trace.
TraceMeta synth_meta(const SynthOptions& opt);
// One layer of tensors in trace layout (OpenMP-parallel).
LayerData synth_layer(const SynthOptions& opt, const TraceMeta& meta, int layer);

// Generates and writes the whole trace layer by layer (memory ~ one layer). `on_layer` is called
// after each layer is written (progress reporting).
void write_synthetic_trace(const std::string& path, const SynthOptions& opt, const WriteOptions& wopt,
                           const std::function<void(int layer)>& on_layer = {});

}  // namespace kvsim
