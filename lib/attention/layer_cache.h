#pragma once
// Per-layer quantities shared by every rule and budget: full causal attention of the
// evaluation queries (and of the observation-window queries), the full head outputs, and
// projected value norms. Computed lazily, once per head or KV group, thread-safe
// (std::call_once, a mutex per KV group's probability tile), so rules and the metrics can ask for
// them from inside OpenMP loops. Probabilities live in bounded tiles (KV group x query range),
// computed when asked for and freed by the walk that uses them.
#include <functional>
#include <memory>
#include <vector>

#include "core/types.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

class NormCache;

enum class NormKind { l1, l2, upper };  // ||v W||_1, ||v W||_2, sum_e sum_d |v_d||W_de|
const char* norm_kind_name(NormKind k);

// The two query sets a replay evaluates: the evaluation queries (positions >= n_c) and the
// observation window (positions n_c-w .. n_c-1, in-sample).
enum class QuerySet { eval, window };

class LayerCache {
 public:
  LayerCache(const TraceMeta& meta, const LayerData& data, i64 n_c, std::vector<i64> eval_rows);
  // window_rows: rows of data.q of the observation-window queries (may be empty).
  LayerCache(const TraceMeta& meta, const LayerData& data, i64 n_c, std::vector<i64> eval_rows,
             std::vector<i64> window_rows);
  ~LayerCache();

  const TraceMeta& meta() const;
  const LayerData& data() const;
  i64 n_c() const;
  i64 n_eval() const;
  const std::vector<i64>& eval_rows() const;
  i64 eval_pos(i64 qi) const;  // position t of evaluation query qi

  // Causal attention probabilities, row qi of query head h in query set s: [seq_len] floats,
  // normalised over [0, t_qi], zero after. One sgemm per probability tile (a KV group's G heads'
  // queries of one query range stacked), then a stable softmax per row. Kept per tile until
  // release_probs; a pointer is valid until then.
  const float* prob_row(QuerySet s, int h, i64 qi) const;
  // Projected value norms nu^h_j. W_o^h = rows h*d..h*d+d-1 of o_proj^T; without o_proj the
  // identity (nu = ||v||_1 or ||v||_2). Computed for j in [0, norm_len()), the positions any
  // evaluation or window query can attend to; entries beyond are NaN.
  const float* value_norms(int h, NormKind kind) const;
  i64 norm_len() const;

  // W_o^h packed for the projection kernel (kernels::pack_panels): panel_count(D) x [d][kPanel].
  // Packed once per head and layer; requires o_proj.
  const float* packed_o_proj(int h) const;

  // The same for either query set.
  i64 count(QuerySet s) const;
  const std::vector<i64>& rows(QuerySet s) const;
  i64 pos(QuerySet s, i64 qi) const;
  // Full-attention head outputs o^h_t = sum_j a_j v_j: [count(s)][head_dim], valid for the
  // queries [q0, q1) (q1 < 0: all of them), which are computed if they are not yet (with their
  // probability tiles, which stay until released).
  const float* outputs(QuerySet s, int h, i64 q0 = 0, i64 q1 = -1) const;
  // Float32 softmax row sums (1 up to rounding), per query: used to normalise masses. The same
  // validity as outputs.
  const double* prob_sums(QuerySet s, int h, i64 q0 = 0, i64 q1 = -1) const;

  // Probability tiles: KV group g's G heads x the queries [q0, q1) of one query range x seq_len.
  // A range holds every query of the set unless that tile would exceed the tile budget
  // (KVSIM_TILE_MIB, default 256 MiB): then the queries are split into ranges of equal size, so a
  // tile's memory stays bounded however long the context (one range per tile, >= 1 query).
  i64 tile_queries(QuerySet s) const;  // queries per range
  int tile_ranges(QuerySet s) const;   // ranges per group
  // Another tile budget than KVSIM_TILE_MIB's (tests; before any probability is asked for).
  void set_tile_budget(std::size_t bytes);

  // Frees KV group g's tiles (every range). Asking for one again recomputes it, bit-identically;
  // outputs and prob_sums stay. No prob_row pointer of the group may be in use.
  void release_probs(QuerySet s, int g) const;
  // The most bytes of probability tiles alive at once so far (both query sets).
  std::size_t prob_bytes_peak() const;
  // Every tile, range by range, the KV groups in waves of one per OpenMP thread: a wave's tiles
  // computed in parallel, then use(g0, g1, q0, q1) for groups [g0, g1) and queries [q0, q1), then
  // (release) the wave's tiles freed, so at most a wave of tiles is alive (without release: all
  // of them). core_seconds (if given) is increased by the computing time.
  void walk_tiles(QuerySet s, const std::function<void(int g0, int g1, i64 q0, i64 q1)>& use, bool release,
                  double* core_seconds = nullptr) const;

  // Computes everything for the set / norm kind now, in parallel over KV groups / heads.
  void precompute(QuerySet s) const;
  void precompute_norms(NormKind kind) const;

  // Exact l1/l2 norms through o_proj are then loaded from / stored to c (attention/norm_cache.h);
  // nullptr: always compute. Call before any norms are requested; c must outlive this cache.
  void set_norm_cache(const NormCache* c);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim
