#include "replay/decode_view.h"

#include <algorithm>

#include "attention/layer_cache.h"
#include "core/error.h"

namespace kvsim {

DecodeView::DecodeView() = default;
DecodeView::~DecodeView() = default;
DecodeView::DecodeView(DecodeView&&) noexcept = default;

RuleInput DecodeView::input(int layer) const {
  RuleInput in = RuleInput::of_layer(*meta, layer, data, n_c, eval_rows, cache.get());
  in.positions = &positions;
  in.absent = absent.empty() ? nullptr : &absent;
  return in;
}

i64 DecodeView::position(int u, i64 j) const {  // per-unit lists: one view KV head per unit, either mode
  return positions[per_unit ? static_cast<std::size_t>(u) : 0][static_cast<std::size_t>(j)];
}

namespace {

// Row of /q_pos holding position t, or -1.
i64 query_row(const TraceMeta& meta, i64 t) {
  const auto it = std::lower_bound(meta.q_pos.begin(), meta.q_pos.end(), t);
  return it != meta.q_pos.end() && *it == t ? it - meta.q_pos.begin() : -1;
}

}  // namespace

DecodeView make_decode_view(const TraceMeta& meta, const LayerData& D, const std::vector<std::vector<i64>>& cached,
                            GqaMode mode, i64 L, i64 E, int window, const QuantizedKV* rows) {
  if (cached.empty()) fail(meta.path, "decode", "no cached token list");
  const int H = D.num_heads, Hkv = D.num_kv_heads, G = H / Hkv, d = D.head_dim;
  bool same = true, equal_counts = true;
  for (const auto& c : cached) {
    same = same && c == cached[0];
    equal_counts = equal_counts && c.size() == cached[0].size();
  }
  DecodeView v;
  std::vector<i64> shared;  // the shared list, or the union
  std::vector<std::vector<i64>> lists;
  if (same) {
    shared = cached[0];
  } else if (equal_counts) {
    v.per_unit = true;
    lists = cached;
  } else {
    for (const auto& c : cached) shared.insert(shared.end(), c.begin(), c.end());
    std::sort(shared.begin(), shared.end());
    shared.erase(std::unique(shared.begin(), shared.end()), shared.end());
  }
  // View KV heads: the model's, or one per unit (query mode: one per query head, G = 1).
  const int Hv = v.per_unit ? static_cast<int>(lists.size()) : Hkv;
  if (v.per_unit && Hv != (mode == GqaMode::kv ? Hkv : H))
    fail(meta.path, "decode", std::to_string(Hv) + " unit lists for " + (mode == GqaMode::kv ? "kv" : "query") +
                                  " mode");
  const int Gv = H / Hv;
  const auto source_kv_head = [&](int g) { return v.per_unit && mode == GqaMode::query ? g / G : g; };
  v.n_c = static_cast<i64>(v.per_unit ? lists[0].size() : shared.size());
  const i64 n = v.n_c + (E - L);
  v.positions.assign(static_cast<std::size_t>(Hv), {});
  for (int g = 0; g < Hv; ++g) {
    auto& p = v.positions[static_cast<std::size_t>(g)];
    p = v.per_unit ? lists[static_cast<std::size_t>(g)] : shared;
    for (i64 t = L; t < E; ++t) p.push_back(t);
  }
  if (!v.per_unit && !same) {  // the union: what each unit does not hold is absent
    const int units = static_cast<int>(cached.size());
    v.absent.assign(static_cast<std::size_t>(units * v.n_c), 1);
    for (int u = 0; u < units; ++u)
      for (i64 t : cached[static_cast<std::size_t>(u)]) {
        const i64 j = std::lower_bound(shared.begin(), shared.end(), t) - shared.begin();
        v.absent[static_cast<std::size_t>(u * v.n_c + j)] = 0;
      }
  }

  // Queries: view token j has one when every view KV head's position j has a stored query.
  std::vector<i64> q_index;                   // view token of each view query row
  std::vector<std::vector<i64>> source_rows;  // [view KV head][view row] trace rows
  source_rows.assign(static_cast<std::size_t>(Hv), {});
  for (i64 j = 0; j < n; ++j) {
    std::vector<i64> rows(static_cast<std::size_t>(Hv));
    bool all = true;
    for (int g = 0; g < Hv && all; ++g) all = (rows[g] = query_row(meta, v.positions[g][j])) >= 0 && rows[g] < D.num_q;
    if (!all) continue;
    q_index.push_back(j);
    for (int g = 0; g < Hv; ++g) source_rows[g].push_back(rows[g]);
  }

  auto m = std::make_shared<TraceMeta>(meta);
  m->num_kv_heads = Hv;
  m->seq_len = n;
  m->prefill_len = v.n_c;
  m->input_ids.clear();
  m->segment.clear();
  for (i64 t : v.positions[0]) {
    if (static_cast<std::size_t>(t) < meta.input_ids.size()) m->input_ids.push_back(meta.input_ids[t]);
    if (static_cast<std::size_t>(t) < meta.segment.size()) m->segment.push_back(meta.segment[t]);
  }
  m->q_pos = q_index;
  m->spans.clear();
  m->has_o = false;

  auto data = std::make_shared<LayerData>();
  data->layer = D.layer;
  data->num_heads = H;
  data->num_kv_heads = Hv;
  data->head_dim = d;
  data->hidden_size = D.hidden_size;
  data->num_q = static_cast<i64>(q_index.size());
  data->seq_len = n;
  data->q.resize(static_cast<std::size_t>(H * data->num_q * d));
  data->k.resize(static_cast<std::size_t>(Hv * n * d));
  data->v.resize(data->k.size());
  for (int h = 0; h < H; ++h) {
    const auto& rows = source_rows[static_cast<std::size_t>(h / Gv)];
    for (i64 r = 0; r < data->num_q; ++r)
      std::copy_n(D.q_row(h, rows[r]), d, data->q.data() + (h * data->num_q + r) * d);
  }
  if (rows && rows->units != static_cast<int>(cached.size()) && !same)
    fail(meta.path, "decode", "held rows for " + std::to_string(rows->units) + " units, " +
                                  std::to_string(cached.size()) + " unit lists");
  // The unit whose rows view KV head g shows: its own (per unit), else the KV head's unit.
  const auto row_unit = [&](int g) { return v.per_unit || mode == GqaMode::kv ? g : g * G; };
  for (int g = 0; g < Hv; ++g)
    for (i64 j = 0; j < n; ++j) {
      const i64 t = v.positions[g][j];
      const bool given = rows && t < rows->n_c && row_unit(g) < rows->units;
      std::copy_n(given ? rows->k_row(row_unit(g), t) : D.k_row(source_kv_head(g), t), d,
                  data->k.data() + (g * n + j) * d);
      std::copy_n(given && rows->has_values() ? rows->v_row(row_unit(g), t) : D.v_row(source_kv_head(g), t), d,
                  data->v.data() + (g * n + j) * d);
    }
  data->o_proj = D.o_proj;

  for (std::size_t r = 0; r < q_index.size(); ++r) {
    if (q_index[r] >= v.n_c) v.eval_rows.push_back(static_cast<i64>(r));
    if (q_index[r] >= v.n_c - window && q_index[r] < v.n_c) v.window_rows.push_back(static_cast<i64>(r));
  }
  v.meta = m;
  v.data = data;
  v.cache = std::make_unique<LayerCache>(*v.meta, *v.data, v.n_c, v.eval_rows, v.window_rows);
  return v;
}

}  // namespace kvsim
