#include "attention/layer_cache.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>

#include <omp.h>
#include <sys/mman.h>

#include "attention/norm_cache.h"
#include "attention/value_norms.h"
#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim {

const char* norm_kind_name(NormKind k) {
  switch (k) {
    case NormKind::l1: return "l1";
    case NormKind::l2: return "l2";
    case NormKind::upper: return "upper";
  }
  return "?";
}

namespace {

// Freed per-layer buffers are kept for the next layer (same shapes): their pages stay mapped,
// so the next LayerCache does not pay a page fault and the kernel's zero fill per 4 KiB page
// (~65K faults for a 256 MiB probability buffer). At most kMaxCached bytes are kept.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool pool;
    return pool;
  }
  ~BufferPool() {
    for (auto& [bytes, p] : free_) std::free(p);
  }
  // A block of at least `bytes` (64-byte aligned); a cached one if one fits without wasting
  // more than half of it.
  float* take(std::size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::size_t best = free_.size();
      for (std::size_t i = 0; i < free_.size(); ++i)
        if (free_[i].first >= bytes && free_[i].first <= 2 * bytes &&
            (best == free_.size() || free_[i].first < free_[best].first))
          best = i;
      if (best != free_.size()) {
        float* p = free_[best].second;
        cached_ -= free_[best].first;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        return p;
      }
      // A miss means the shapes changed (a longer trace, another protocol): smaller cached blocks
      // are stale, release them rather than hold them next to the new ones.
      for (auto it = free_.begin(); it != free_.end();) {
        if (it->first < bytes) {
          std::free(it->second);
          cached_ -= it->first;
          it = free_.erase(it);
        } else {
          ++it;
        }
      }
    }
    // Big blocks: 2 MiB aligned and marked for transparent huge pages (THP is often in "madvise"
    // mode), so streaming a 1 GiB probability matrix does not miss the TLB every 4 KiB.
    const bool huge = bytes >= kHugePage;
    const std::size_t rounded = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes;
    auto* p = static_cast<float*>(std::aligned_alloc(huge ? kHugePage : 64, rounded));
    if (!p) throw std::bad_alloc();
    if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure changes nothing
    return p;
  }
  void give(float* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_ + bytes > kMaxCached) {
      std::free(p);
      return;
    }
    free_.push_back({bytes, p});
    cached_ += bytes;
  }

 private:
  static constexpr std::size_t kMaxCached = std::size_t{1} << 30;
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;
  std::mutex mu_;
  std::vector<std::pair<std::size_t, float*>> free_;
  std::size_t cached_ = 0;
};

// Uninitialised 64-byte aligned float storage: the big per-layer buffers are written once by
// the GEMMs, so zero-filling them first would only cost time.
struct FloatBuffer {
  float* p = nullptr;
  std::size_t bytes = 0;
  ~FloatBuffer() { release(); }
  void release() {
    if (p) BufferPool::instance().give(p, bytes);
    p = nullptr;
  }
  void allocate(std::size_t n) {
    bytes = ((n == 0 ? 1 : n) * sizeof(float) + 63) / 64 * 64;
    p = BufferPool::instance().take(bytes);
  }
};

// One probability tile [G][q1 - q0][S] (a KV group's heads x a query range): computed on first
// use, released on request (release_probs) and recomputed, bit-identically, if asked for again.
// The head outputs and row sums computed with it stay for the whole layer.
struct GroupTile {
  std::mutex mu;
  bool outputs_done = false;
  FloatBuffer probs;
};

struct SetState {
  std::vector<i64> rows, pos;
  i64 max_pos = -1;
  i64 range = 1;   // queries per tile
  int ranges = 1;  // tiles per KV group
  std::once_flag alloc_once;
  std::unique_ptr<GroupTile[]> tiles;  // [group * ranges + range]
  FloatBuffer out;                     // [H][n][d]
  std::vector<double> sums;            // [H][n]
};

}  // namespace

struct LayerCache::Impl {
  const TraceMeta& meta;
  const LayerData& data;
  i64 n_c;
  int H, Hkv, G, d, D;
  i64 S;
  kernels::LogitSpec logits;
  SetState sets[2];
  i64 norm_len = 0;
  std::unique_ptr<std::once_flag[]> norm_once;  // [H][3]
  std::vector<FloatBuffer> norms;               // [H][3]
  std::unique_ptr<std::once_flag[]> pack_once;  // [H]
  std::vector<FloatBuffer> packed;              // [H]: W_o^h in projection panels
  const NormCache* norm_cache = nullptr;        // optional on-disk cache of exact l1/l2 norms
  std::unique_ptr<LayerNormKeys> norm_keys;
  std::atomic<std::size_t> tile_bytes{0}, tile_bytes_peak{0};  // probability tiles alive

  Impl(const TraceMeta& m, const LayerData& l, i64 nc) : meta(m), data(l), n_c(nc) {
    H = l.num_heads;
    Hkv = l.num_kv_heads;
    G = Hkv > 0 ? H / Hkv : 0;
    d = l.head_dim;
    D = l.hidden_size;
    S = l.seq_len;
    logits = m.logits();
  }

  SetState& set(QuerySet s) { return sets[s == QuerySet::eval ? 0 : 1]; }

  void init_set(QuerySet s, std::vector<i64> rows) {
    SetState& st = set(s);
    for (i64 r : rows) {
      if (r < 0 || r >= data.num_q || r >= meta.num_queries())
        fail(meta.path, "q_pos", "query row " + std::to_string(r) + " out of range");
      const i64 t = meta.q_pos[r];
      if (t < 0 || t >= S) fail(meta.path, "q_pos", "position " + std::to_string(t) + " outside [0, seq_len)");
      st.pos.push_back(t);
      st.max_pos = std::max(st.max_pos, t);
    }
    st.rows = std::move(rows);
    split_ranges(st, tile_budget_from_env());
  }

  // The set's queries in ranges of equal size (the last no longer) whose tiles fit in `budget`
  // bytes (at least one query per range): k = ceil(n / r) ranges of the largest size r that
  // fits, then evened out to ceil(n / k) <= r queries each, still k ranges and none empty.
  void split_ranges(SetState& st, i64 budget) {
    const i64 n = std::max<i64>(1, static_cast<i64>(st.rows.size()));  // no query: one empty range
    const i64 per_query = std::max<i64>(1, static_cast<i64>(G) * S * static_cast<i64>(sizeof(float)));
    const i64 fits = std::max<i64>(1, std::min<i64>(n, budget / per_query));
    st.ranges = static_cast<int>((n + fits - 1) / fits);
    st.range = (n + st.ranges - 1) / st.ranges;
    st.tiles.reset(new GroupTile[static_cast<std::size_t>(std::max(Hkv, 1)) * st.ranges]);
  }

  // KVSIM_TILE_MIB (whole MiB, >= 1), else 256 MiB: up to 128K positions a Llama-8B-shaped
  // group's 128 evaluation queries fit in one tile (ranges cost time: each range's P V product
  // packs the group's values again, 7% of the core at 128K with two ranges).
  static i64 tile_budget_from_env() {
    const char* e = std::getenv("KVSIM_TILE_MIB");
    if (!e || !*e) return i64{256} << 20;
    char* end = nullptr;
    const long long mib = std::strtoll(e, &end, 10);
    if (*end != '\0' || mib < 1 || mib > (1LL << 20))
      fail("KVSIM_TILE_MIB", "value", std::string("'") + e + "' is not a whole number of MiB in [1, 1048576]");
    return static_cast<i64>(mib) << 20;
  }

  i64 range_begin(const SetState& st, int c) const { return std::min<i64>(c * st.range, static_cast<i64>(st.rows.size())); }
  i64 range_end(const SetState& st, int c) const { return range_begin(st, c + 1); }

  void count_tile(std::ptrdiff_t bytes) {
    const std::size_t now = tile_bytes.fetch_add(static_cast<std::size_t>(bytes)) + static_cast<std::size_t>(bytes);
    std::size_t peak = tile_bytes_peak.load();
    while (now > peak && !tile_bytes_peak.compare_exchange_weak(peak, now)) {
    }
  }

  // One sgemm per tile: [G*m x d] stacked queries of range c x K_g^T over [0, max_pos] of the
  // whole set (the same product shapes whatever the range: values never depend on the tiling of
  // other rows), then a stable softmax of each row over [0, t]; then the head outputs with a
  // second sgemm (the first time only: a recomputed tile is bit-identical).
  void compute_tile(QuerySet s, int g, int c, GroupTile& tile) {
    SetState& st = set(s);
    const i64 n = static_cast<i64>(st.rows.size()), q0 = range_begin(st, c), m = range_end(st, c) - q0;
    tile.probs.allocate(static_cast<std::size_t>(G) * m * S);
    count_tile(static_cast<std::ptrdiff_t>(tile.probs.bytes));
    if (m == 0) return;
    const i64 ncols = st.max_pos + 1;
    avec<float> qstack(static_cast<std::size_t>(G) * m * d);
    for (int r = 0; r < G; ++r)
      for (i64 qi = 0; qi < m; ++qi)
        std::copy_n(data.q_row(g * G + r, st.rows[q0 + qi]), d, qstack.data() + (r * m + qi) * d);
    float* C = tile.probs.p;
    kernels::sgemm(false, true, G * m, ncols, d, 1.f, qstack.data(), d, data.k_head(g), d, 0.f, C, S);
    for (i64 r = 0; r < G * m; ++r) {
      float* row = C + r * S;
      const i64 t = st.pos[q0 + r % m];
      kernels::logit_softmax_inplace(row, t + 1, logits);
      std::fill(row + t + 1, row + S, 0.f);
      if (!tile.outputs_done)
        st.sums[static_cast<std::size_t>(g * G + r / m) * n + q0 + r % m] = kernels::sum(row, t + 1);
    }
    if (!tile.outputs_done) {
      // Head h's rows of the range are contiguous in out [H][n][d], the G heads' are not: with one
      // range (the common case) the product lands in place, otherwise it is copied per head.
      float* dst = st.out.p + (static_cast<std::size_t>(g) * G * n + q0) * d;
      avec<float> tmp(st.ranges == 1 ? 0 : static_cast<std::size_t>(G) * m * d);
      kernels::sgemm(false, false, G * m, d, ncols, 1.f, C, S, data.v_head(g), d, 0.f,
                     st.ranges == 1 ? dst : tmp.data(), d);
      if (st.ranges != 1)
        for (int r = 0; r < G; ++r)
          std::copy_n(tmp.data() + static_cast<std::size_t>(r) * m * d, m * d, dst + static_cast<std::size_t>(r) * n * d);
    }
    tile.outputs_done = true;
  }

  void alloc_set(QuerySet s) {
    SetState& st = set(s);
    std::call_once(st.alloc_once, [&] {
      const std::size_t n = st.rows.size();
      st.out.allocate(static_cast<std::size_t>(H) * n * d);
      st.sums.assign(static_cast<std::size_t>(H) * n, 0.0);
    });
  }

  GroupTile& tile_of(QuerySet s, int g, int c) { return set(s).tiles[static_cast<std::size_t>(g) * set(s).ranges + c]; }

  // The tile of group g and range c, computed if absent.
  const float* tile_probs(QuerySet s, int g, int c) {
    alloc_set(s);
    GroupTile& tile = tile_of(s, g, c);
    std::lock_guard<std::mutex> lock(tile.mu);
    if (!tile.probs.p) compute_tile(s, g, c, tile);
    return tile.probs.p;
  }

  // Outputs and row sums of the queries [q0, q1) (q1 < 0: all): computes the tile of each range
  // they meet the first time, never again.
  void ensure_outputs(QuerySet s, int g, i64 q0, i64 q1) {
    alloc_set(s);
    const SetState& st = set(s);
    const i64 n = static_cast<i64>(st.rows.size()), end = q1 < 0 ? n : std::min(q1, n);
    if (q0 >= end) return;
    for (int c = static_cast<int>(q0 / st.range); c <= static_cast<int>((end - 1) / st.range); ++c) {
      GroupTile& tile = tile_of(s, g, c);
      std::lock_guard<std::mutex> lock(tile.mu);
      if (!tile.outputs_done) compute_tile(s, g, c, tile);
    }
  }

  void release(QuerySet s, int g, int c) {
    GroupTile& tile = tile_of(s, g, c);
    std::lock_guard<std::mutex> lock(tile.mu);
    if (!tile.probs.p) return;
    count_tile(-static_cast<std::ptrdiff_t>(tile.probs.bytes));
    tile.probs.release();
  }

  // W_o^h packed for the projection kernel, once per head: the exact L1 norms and the metrics share it.
  const float* packed_of(int h) {
    std::call_once(pack_once[h], [&] {
      packed[h].allocate(static_cast<std::size_t>(kernels::panel_count(D)) * d * kernels::kPanel);
      kernels::pack_panels(data.o_proj.data() + static_cast<i64>(h) * d, static_cast<i64>(H) * d, d, D, packed[h].p);
    });
    return packed[h].p;
  }

  const float* norms_of(int h, NormKind kind) {
    const int k = static_cast<int>(kind);
    std::call_once(norm_once[h * 3 + k], [&] {
      FloatBuffer& buf = norms[h * 3 + k];
      buf.allocate(static_cast<std::size_t>(S));
      const float* v = data.v_head(h / G);
      const float* Wt = data.has_o_proj() ? data.o_proj.data() + static_cast<i64>(h) * d : nullptr;
      const i64 ld = static_cast<i64>(H) * d;
      // Only exact norms through o_proj cost more than hashing their inputs.
      const bool cached = norm_keys && Wt && kind != NormKind::upper;
      const NormKey key = cached ? norm_keys->key(h, kind) : NormKey{};
      if (!cached || !norm_cache->load(key, buf.p, norm_len)) {
        if (kind == NormKind::l1 && Wt) projected_l1_norms_packed(v, norm_len, d, packed_of(h), D, buf.p);
        if (kind == NormKind::l1 && !Wt) projected_l1_norms(v, norm_len, d, nullptr, ld, D, buf.p);
        if (kind == NormKind::l2) projected_l2_norms(v, norm_len, d, Wt, ld, D, buf.p);
        if (kind == NormKind::upper) projected_upper_norms(v, norm_len, d, Wt, ld, D, buf.p);
        if (cached) norm_cache->store(key, buf.p, norm_len);
      }
      std::fill(buf.p + norm_len, buf.p + S, std::numeric_limits<float>::quiet_NaN());
    });
    return norms[h * 3 + k].p;
  }
};

LayerCache::LayerCache(const TraceMeta& meta, const LayerData& data, i64 n_c, std::vector<i64> eval_rows)
    : LayerCache(meta, data, n_c, std::move(eval_rows), {}) {}

LayerCache::LayerCache(const TraceMeta& meta, const LayerData& data, i64 n_c, std::vector<i64> eval_rows,
                       std::vector<i64> window_rows)
    : impl_(std::make_unique<Impl>(meta, data, n_c)) {
  Impl& m = *impl_;
  if (m.Hkv <= 0 || m.H % m.Hkv != 0) fail(meta.path, "num_kv_heads", "must divide num_heads");
  if (n_c < 0 || n_c > m.S) fail(meta.path, "compression point", "outside [0, seq_len]");
  m.init_set(QuerySet::eval, std::move(eval_rows));
  m.init_set(QuerySet::window, std::move(window_rows));
  m.norm_len = std::min(m.S, std::max({n_c, m.sets[0].max_pos + 1, m.sets[1].max_pos + 1}));
  m.norm_once.reset(new std::once_flag[static_cast<std::size_t>(m.H) * 3]);
  m.norms.resize(static_cast<std::size_t>(m.H) * 3);
  m.pack_once.reset(new std::once_flag[static_cast<std::size_t>(m.H)]);
  m.packed.resize(static_cast<std::size_t>(m.H));
}

LayerCache::~LayerCache() = default;

const TraceMeta& LayerCache::meta() const { return impl_->meta; }
const LayerData& LayerCache::data() const { return impl_->data; }
i64 LayerCache::n_c() const { return impl_->n_c; }
i64 LayerCache::n_eval() const { return count(QuerySet::eval); }
const std::vector<i64>& LayerCache::eval_rows() const { return rows(QuerySet::eval); }
i64 LayerCache::eval_pos(i64 qi) const { return pos(QuerySet::eval, qi); }
i64 LayerCache::norm_len() const { return impl_->norm_len; }

i64 LayerCache::count(QuerySet s) const { return static_cast<i64>(impl_->set(s).rows.size()); }
const std::vector<i64>& LayerCache::rows(QuerySet s) const { return impl_->set(s).rows; }
i64 LayerCache::pos(QuerySet s, i64 qi) const { return impl_->set(s).pos[qi]; }

const float* LayerCache::prob_row(QuerySet s, int h, i64 qi) const {
  Impl& m = *impl_;
  const SetState& st = m.set(s);
  const int c = static_cast<int>(qi / st.range);
  const i64 q0 = m.range_begin(st, c), rows = m.range_end(st, c) - q0;
  return m.tile_probs(s, h / m.G, c) + (static_cast<std::size_t>(h % m.G) * rows + (qi - q0)) * m.S;
}

i64 LayerCache::tile_queries(QuerySet s) const { return impl_->set(s).range; }
void LayerCache::set_tile_budget(std::size_t bytes) {
  for (QuerySet s : {QuerySet::eval, QuerySet::window}) impl_->split_ranges(impl_->set(s), static_cast<i64>(bytes));
}
int LayerCache::tile_ranges(QuerySet s) const { return impl_->set(s).ranges; }

void LayerCache::release_probs(QuerySet s, int g) const {
  for (int c = 0; c < impl_->set(s).ranges; ++c) impl_->release(s, g, c);
}

std::size_t LayerCache::prob_bytes_peak() const { return impl_->tile_bytes_peak.load(); }

const float* LayerCache::outputs(QuerySet s, int h, i64 q0, i64 q1) const {
  impl_->ensure_outputs(s, h / impl_->G, q0, q1);
  return impl_->set(s).out.p + static_cast<std::size_t>(h) * count(s) * impl_->d;
}

const double* LayerCache::prob_sums(QuerySet s, int h, i64 q0, i64 q1) const {
  impl_->ensure_outputs(s, h / impl_->G, q0, q1);
  return impl_->set(s).sums.data() + static_cast<std::size_t>(h) * count(s);
}

const float* LayerCache::value_norms(int h, NormKind kind) const { return impl_->norms_of(h, kind); }

void LayerCache::set_norm_cache(const NormCache* c) {
  impl_->norm_cache = c;
  impl_->norm_keys = c ? std::make_unique<LayerNormKeys>(*c, impl_->data, impl_->norm_len) : nullptr;
}

const float* LayerCache::packed_o_proj(int h) const {
  if (!impl_->data.has_o_proj()) fail(impl_->meta.path, "o_proj", "packed_o_proj needs o_proj");
  return impl_->packed_of(h);
}

void LayerCache::walk_tiles(QuerySet s, const std::function<void(int, int, i64, i64)>& use, bool release,
                            double* core_seconds) const {
  Impl& m = *impl_;
  const SetState& st = m.set(s);
  // Without release nothing is gained by waves: one wave of every group (fewer barriers).
  const int groups = m.Hkv, wave = release ? std::max(1, omp_get_max_threads()) : std::max(1, groups);
  for (int c = 0; c < st.ranges; ++c)
    for (int g0 = 0; g0 < groups; g0 += wave) {
      const int g1 = std::min(groups, g0 + wave);
      const double t0 = omp_get_wtime();
#pragma omp parallel for schedule(dynamic, 1)
      for (int g = g0; g < g1; ++g) m.tile_probs(s, g, c);
      if (core_seconds) *core_seconds += omp_get_wtime() - t0;
      use(g0, g1, m.range_begin(st, c), m.range_end(st, c));
      if (release)
        for (int g = g0; g < g1; ++g) m.release(s, g, c);
    }
}

void LayerCache::precompute(QuerySet s) const { walk_tiles(s, [](int, int, i64, i64) {}, false); }

void LayerCache::precompute_norms(NormKind kind) const {
  const int heads = impl_->H;
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < heads; ++h) impl_->norms_of(h, kind);
}

}  // namespace kvsim
