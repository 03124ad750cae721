#include "replay/decode_protocol.h"

#include <algorithm>
#include <memory>

#include "core/error.h"
#include "replay/decode_view.h"

namespace kvsim {

namespace {

// Unit u's list of `lists`: one list per unit, or one shared by every unit.
const std::vector<i64>& unit_list(const std::vector<std::vector<i64>>& lists, std::size_t u) {
  return lists[lists.size() == 1 ? 0 : u];
}

// The cache of one budget between two compressions: per unit, the positions < L it holds.
struct CacheState {
  GqaMode mode = GqaMode::kv;
  std::vector<std::vector<i64>> cached;  // one shared list until the rule first decides
};

// The per-unit kept positions of a selection made on `view` (its kept span [0, view.n_c)),
// without the tokens the unit did not hold (an evicted token never returns).
CacheState state_after(const Selection& sel, const DecodeView& view) {
  CacheState s;
  s.mode = sel.mode;
  s.cached.assign(static_cast<std::size_t>(sel.units), {});
  for (int u = 0; u < sel.units; ++u) {
    const std::uint8_t* m = sel.unit_mask(u);
    for (i64 j = 0; j < sel.n_c; ++j) {
      const bool absent = !view.absent.empty() && view.absent[static_cast<std::size_t>(u * sel.n_c + j)];
      if (m[j] && !absent) s.cached[u].push_back(view.position(u, j));
    }
  }
  return s;
}

// ThinK's channel mask of each of `units` units ([units][d]; empty without key channels): the
// selection's masks are per KV head of the data it saw, one per unit when that data had a KV
// head per unit (a per-unit decode view), else shared by a query-mode unit's group.
std::vector<std::uint8_t> unit_key_channels(const Selection& sel, int units, const LayerData& D, bool per_unit_heads) {
  if (sel.key_channels.empty()) return {};
  const int d = D.head_dim, G = D.num_heads / D.num_kv_heads;
  std::vector<std::uint8_t> out(static_cast<std::size_t>(units) * d);
  for (int u = 0; u < units; ++u) {
    const int g = per_unit_heads || sel.mode == GqaMode::kv ? u : u / G;
    std::copy_n(sel.key_channels.begin() + static_cast<std::ptrdiff_t>(g) * d, d,
                out.begin() + static_cast<std::ptrdiff_t>(u) * d);
  }
  return out;
}

// decode_cache_tokens of one evaluation query qi (position t) of unit u: a step-wise rule's own
// mask (own_mask; m is scratch), else the `held` tokens before `from` plus every one since.
void count_cache_tokens(DecodeStats& st, const Selection& s, int u, i64 qi, i64 t, i64 held, i64 from, bool own_mask,
                        std::vector<std::uint8_t>& m) {
  i64 c = held + (t - from + 1);
  if (own_mask) {
    s.query_mask(u, qi, t, m);
    c = std::count(m.begin(), m.end(), 1);
  }
  st.cache_tokens_sum += static_cast<double>(c);
  ++st.cache_tokens_count;
}

}  // namespace

i64 decode_keep(const Budget& b, i64 L) {
  if (b.kind == Budget::Kind::threshold) return -1;
  if (b.kind == Budget::Kind::memory)
    fail("--budgets", b.text, "a memory budget (mem=F) is not defined under the decode protocol; give tokens, a "
                              "fraction or cr=");
  return b.kind == Budget::Kind::tokens ? static_cast<i64>(b.value) : b.tokens_for(L);
}

DecodeCut decode_cut(const Rule& rule, const TraceMeta& meta, const LayerData& D,
                     const std::vector<std::vector<i64>>& cached, GqaMode mode, i64 L, i64 E, const Budget& budget,
                     i64 keep, int window, int layer, const std::vector<i64>* planned, const QuantizedKV* rows) {
  DecodeCut out;
  out.mode = mode;
  i64 held_max = 0;
  for (const auto& c : cached) held_max = std::max<i64>(held_max, static_cast<i64>(c.size()));
  bool cuts = keep < held_max;
  if (planned) {  // a cross-layer rule's own counts decide
    cuts = false;
    for (std::size_t u = 0; u < planned->size(); ++u)
      cuts = cuts || (*planned)[u] < static_cast<i64>(unit_list(cached, u).size());
  }
  if (!cuts) {  // nothing to cut: every unit keeps what it holds
    out.cached = cached;
    return out;
  }
  auto view = std::make_shared<const DecodeView>(make_decode_view(meta, D, cached, mode, L, E, window, rows));
  Selection sel;
  try {
    const Budget b = keep < 0 ? budget : Budget::parse(std::to_string(std::max<i64>(1, std::min(keep, view->n_c))));
    RuleInput vin = view->input(layer);
    std::vector<std::vector<i64>> plan;
    if (planned) {
      plan = {*planned};
      vin.planned = &plan;
    }
    sel = std::move(rule.select(vin, {b}).at(0));
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (decode protocol: compression at position " + std::to_string(L) +
                ", layer " + std::to_string(layer) + ", budget " + budget.text + ")");
  }
  if (!sel.key_channels.empty() && sel.quant)
    fail(rule.spec(), "--protocol decode",
         "prunes key channels of a quantized cache: past n_0 only one of the two is carried (use --every larger "
         "than the generation)");
  const CacheState next = state_after(sel, *view);
  out.mode = next.mode;
  out.cached = next.cached;
  out.cut = true;
  const int units = static_cast<int>(next.cached.size()), d = D.head_dim;
  out.key_channels = unit_key_channels(sel, units, D, view->per_unit);
  if (sel.quant) {  // the view's rows, by model position
    const QuantizedKV& vq = *sel.quant;
    auto q = std::make_shared<QuantizedKV>();
    q->units = units;
    q->n_c = L;
    q->d = d;
    q->k.assign(static_cast<std::size_t>(units) * L * d, 0.f);
    q->v.assign(q->k.size(), 0.f);
    q->k_coded.assign(static_cast<std::size_t>(units) * L, 0);
    q->v_coded.assign(q->k_coded.size(), 0);
    q->k_coded_row_bytes = vq.k_coded_row_bytes;
    q->v_coded_row_bytes = vq.v_coded_row_bytes;
    for (int u = 0; u < units; ++u)
      for (i64 j = 0; j < view->n_c; ++j) {
        if (!sel.unit_mask(u)[j]) continue;
        const i64 p = view->position(u, j);
        const std::size_t at = static_cast<std::size_t>(u) * L + p;
        std::copy_n(vq.k_row(u, j), d, q->k.data() + at * d);
        std::copy_n(vq.v_row(u, j), d, q->v.data() + at * d);
        q->k_coded[at] = vq.k_is_coded(u, j);
        q->v_coded[at] = vq.v_is_coded(u, j);
      }
    out.quant = std::move(q);
  }
  if (!sel.per_query.empty()) {
    out.stepwise = std::make_shared<const Selection>(std::move(sel));
    out.view = view;
  }
  return out;
}

std::shared_ptr<const QuantizedKV> held_rows_after(const QuantizedKV* prev, const DecodeCut& c, const LayerData& D,
                                                   i64 L) {
  if (c.key_channels.empty() && !c.quant && !prev) return nullptr;
  const int units = static_cast<int>(c.cached.size()), d = D.head_dim, G = D.num_heads / D.num_kv_heads;
  if (prev && prev->units != units) fail("decode protocol", "held rows", "units changed between compressions");
  auto r = std::make_shared<QuantizedKV>();
  r->units = units;
  r->n_c = L;
  r->d = d;
  r->k.assign(static_cast<std::size_t>(units) * L * d, 0.f);
  const bool quant = c.quant || (prev && prev->has_values());  // else ThinK (values are the trace's)
  if (quant) {
    const QuantizedKV& q = c.quant ? *c.quant : *prev;
    r->v.assign(r->k.size(), 0.f);
    r->k_coded.assign(static_cast<std::size_t>(units) * L, 0);
    r->v_coded.assign(r->k_coded.size(), 0);
    r->k_coded_row_bytes = q.k_coded_row_bytes;
    r->v_coded_row_bytes = q.v_coded_row_bytes;
  }
  for (int u = 0; u < units; ++u) {
    const int g = c.mode == GqaMode::kv ? u : u / G;
    for (i64 p : c.cached[static_cast<std::size_t>(u)]) {
      const std::size_t at = static_cast<std::size_t>(u) * L + p;
      const bool before = prev && p < prev->n_c;  // held (or given back) before this cut
      float* k = r->k.data() + at * d;
      if (!quant) {  // ThinK: the key as it stood, less the cut's pruned channels
        std::copy_n(before ? prev->k_row(u, p) : D.k_row(g, p), d, k);
        if (c.key_channels.empty()) continue;  // this cut pruned nothing more
        const std::uint8_t* ch = c.key_channels.data() + static_cast<std::size_t>(u) * d;
        for (int x = 0; x < d; ++x)
          if (!ch[x]) k[x] = 0.f;
        continue;
      }
      float* v = r->v.data() + at * d;
      for (int side = 0; side < 2; ++side) {  // codes once given are kept; else this cut's row
        const bool kept_codes = before && (side == 0 ? prev->k_is_coded(u, p) : prev->v_is_coded(u, p));
        const bool new_codes = c.quant && (side == 0 ? c.quant->k_is_coded(u, p) : c.quant->v_is_coded(u, p));
        const float* src = kept_codes ? (side == 0 ? prev->k_row(u, p) : prev->v_row(u, p))
                         : new_codes  ? (side == 0 ? c.quant->k_row(u, p) : c.quant->v_row(u, p))
                         : side == 0  ? D.k_row(g, p) : D.v_row(g, p);
        std::copy_n(src, d, side == 0 ? k : v);
        (side == 0 ? r->k_coded : r->v_coded)[at] = kept_codes || new_codes;
      }
    }
  }
  return r;
}

namespace {

std::vector<std::uint8_t> mask_of(const std::vector<i64>& cached, i64 from, i64 t) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(t + 1), 0);
  for (i64 p : cached)
    if (p <= t) m[p] = 1;
  for (i64 p = from; p <= t; ++p) m[p] = 1;
  return m;
}

// Append-only admission: nothing cached before `from` leaves; of the tokens [from, L) the ones
// the cut kept enter (per unit; the held lists expand to the cut's units when they were shared).
void admit_only(DecodeCut& c, const std::vector<std::vector<i64>>& held, i64 from) {
  for (std::size_t u = 0; u < c.cached.size(); ++u) {
    const auto& h = unit_list(held, u);
    std::vector<i64> merged;
    for (i64 p : h)
      if (p < from) merged.push_back(p);
    for (i64 p : c.cached[u])
      if (p >= from) merged.push_back(p);
    c.cached[u] = std::move(merged);
  }
  c.stepwise = nullptr;  // a step-wise rule's own masks would evict: admission keeps its cut only
  c.view = nullptr;
}

// One stretch of generation between two compressions: its evaluation queries [q0, q1) see the
// cache `state` plus every token from `from` on, or (a step-wise rule) the rule's own masks.
struct Interval {
  CacheState state;
  i64 from = 0, q0 = 0, q1 = 0;
  std::shared_ptr<const Selection> stepwise;  // per-query masks over `view`'s tokens (or positions, view null)
  std::shared_ptr<const DecodeView> view;
  std::shared_ptr<const QuantizedKV> rows;    // what the cache gives back (ThinK, quant), or null
};

// The one-shot start's rows (--decode-start compressed): its pruned keys or quantized cache, as a
// cut at n_0 that kept `state` would leave them.
std::shared_ptr<const QuantizedKV> start_rows(const Selection& s0, const CacheState& state, const LayerData& D,
                                              i64 n0) {
  if (s0.key_channels.empty() && !s0.quant) return nullptr;
  DecodeCut c;
  c.mode = s0.mode;
  c.cached = state.cached;
  c.quant = s0.quant;  // positions [0, n_0): its rows are by position already
  c.key_channels = unit_key_channels(s0, s0.units, D, false);
  return held_rows_after(nullptr, c, D, n0);
}

// Per unit, the bytes of the positions < n_0 the last query holds (`kept`) under `rows`' codes.
std::vector<double> held_bytes(const Selection& kept, const QuantizedKV& rows, i64 n0) {
  std::vector<double> out(static_cast<std::size_t>(kept.units), 0.0);
  const double full = 2.0 * rows.d;
  for (int u = 0; u < kept.units; ++u)
    for (i64 p = 0; p < n0; ++p)
      if (kept.unit_mask(u)[p])
        out[u] += (rows.k_is_coded(u, p) ? rows.k_coded_row_bytes : full) +
                  (rows.v_is_coded(u, p) ? rows.v_coded_row_bytes : full);
  return out;
}

// Unit u's mask of evaluation query qi (position t) in interval iv.
std::vector<std::uint8_t> query_mask(const Interval& iv, int u, i64 qi, i64 t) {
  if (!iv.stepwise) return mask_of(unit_list(iv.state.cached, static_cast<std::size_t>(u)), iv.from, t);
  const Selection& s = *iv.stepwise;
  const i64 n_eval = static_cast<i64>(s.per_query.size()) / s.units;
  const auto& pm = s.per_query[static_cast<std::size_t>(u * n_eval + (iv.view ? qi - iv.q0 : qi))];
  std::vector<std::uint8_t> m(static_cast<std::size_t>(t + 1), 0);
  for (std::size_t j = 0; j < pm.size(); ++j)
    if (pm[j]) m[iv.view ? iv.view->position(u, static_cast<i64>(j)) : static_cast<i64>(j)] = 1;
  return m;
}

}  // namespace

std::vector<Selection> decode_select(const Rule& rule, const RuleInput& in, const std::vector<Budget>& budgets,
                                     const DecodeOptions& opt, std::vector<DecodeStats>* stats) {
  const TraceMeta& meta = *in.meta;
  const LayerData& D = *in.data;
  const i64 n0 = in.n_c;
  if (opt.every < 1) fail("--every", std::to_string(opt.every), "must be >= 1 under the decode protocol");
  std::vector<i64> eval_pos;
  for (i64 r : in.eval_rows) eval_pos.push_back(meta.q_pos[static_cast<std::size_t>(r)]);
  const i64 ne = static_cast<i64>(eval_pos.size());
  if (ne == 0) fail(meta.path, "q_pos", "no evaluation query after n_0 = " + std::to_string(n0));
  if (stats) stats->assign(budgets.size(), {});
  // Compressions at n_0 + k * every, k >= 1, up to the last evaluation query.
  std::vector<i64> bounds;
  for (i64 L = n0 + opt.every; L <= eval_pos.back(); L += opt.every) bounds.push_back(L);

  // Start: the one-shot selections (all budgets from one call, as the one-shot protocol makes
  // them) or the full cache. Without a compression after n_0 that is the whole answer.
  std::vector<Selection> first;
  if (opt.start_compressed) first = rule.select(in, budgets);
  if (bounds.empty()) {
    std::vector<Selection> sels = std::move(first);
    if (!opt.start_compressed)
      for (std::size_t b = 0; b < budgets.size(); ++b) {
        sels.emplace_back(GqaMode::kv, D.num_kv_heads, n0);
        std::fill(sels.back().kept.begin(), sels.back().kept.end(), 1);
      }
    std::vector<std::uint8_t> m;
    if (stats)  // each query's cache: the kept span plus every token since n_0 (or its own mask)
      for (std::size_t b = 0; b < budgets.size(); ++b)
        for (int u = 0; u < sels[b].units; ++u)
          for (i64 q = 0; q < ne; ++q)
            count_cache_tokens((*stats)[b], sels[b], u, q, eval_pos[q], sels[b].kept_count(u), n0,
                               !sels[b].per_query.empty(), m);
    return sels;
  }
  // A cross-layer rule keeps the allocation it planned at n_0 (Rule::decode_counts).
  const bool cross_layer = rule.layer_planner() != nullptr;
  if (cross_layer) require_plan(in, rule.spec(), budgets.size());

  std::vector<Selection> out;
  for (std::size_t b = 0; b < budgets.size(); ++b) {
    std::vector<Interval> intervals;
    Interval iv;
    iv.from = n0;
    if (opt.start_compressed) {
      const Selection& s0 = first[b];
      iv.state.mode = s0.mode;
      iv.state.cached.assign(static_cast<std::size_t>(s0.units), {});
      for (int u = 0; u < s0.units; ++u)
        for (i64 j = 0; j < n0; ++j)
          if (s0.unit_mask(u)[j]) iv.state.cached[u].push_back(j);
      if (!s0.per_query.empty()) iv.stepwise = std::make_shared<const Selection>(s0);
      iv.rows = start_rows(s0, iv.state, D, n0);
    } else {
      iv.state.cached.assign(1, {});
      for (i64 j = 0; j < n0; ++j) iv.state.cached[0].push_back(j);
    }
    int units = opt.start_compressed ? first[b].units : 0;  // 0: not yet decided (one shared list)
    i64 qi = 0;
    for (std::size_t k = 0; k <= bounds.size(); ++k) {
      const i64 end = k < bounds.size() ? bounds[k] : eval_pos.back() + 1;
      iv.q0 = qi;
      while (qi < ne && eval_pos[qi] < end) ++qi;
      iv.q1 = qi;
      intervals.push_back(iv);
      if (k == bounds.size()) break;
      // Compression at L: each unit holds its cached tokens plus [from, L), or after an evicting
      // step-wise interval what the rule's mask of the interval's last query held (and the
      // tokens after it); Quest's masks evict nothing.
      const i64 L = end;
      std::vector<std::vector<i64>> cached;
      const bool masks_evict = iv.stepwise && rule.per_query_evicts();
      const int held_units = masks_evict ? iv.stepwise->units : static_cast<int>(iv.state.cached.size());
      for (int u = 0; u < held_units; ++u) {
        std::vector<i64> c;
        i64 next = iv.from;
        if (masks_evict && iv.q1 > iv.q0) {
          const auto m = query_mask(iv, u, iv.q1 - 1, eval_pos[iv.q1 - 1]);
          for (i64 j = 0; j < static_cast<i64>(m.size()); ++j)
            if (m[j]) c.push_back(j);
          next = static_cast<i64>(m.size());
        } else {
          c = unit_list(iv.state.cached, static_cast<std::size_t>(u));
        }
        for (i64 t = next; t < L; ++t) c.push_back(t);
        cached.push_back(std::move(c));
      }
      const GqaMode mode = masks_evict ? iv.stepwise->mode : iv.state.mode;
      const i64 next_end = k + 1 < bounds.size() ? bounds[k + 1] : eval_pos.back() + 1;
      const i64 keep = decode_keep(budgets[b], L);
      std::vector<i64> counts;
      if (cross_layer) {
        if (keep < 0) fail(rule.spec(), "budget " + budgets[b].text, "a threshold does not apply to a cross-layer rule");
        std::vector<i64> held;
        for (const auto& c : cached) held.push_back(static_cast<i64>(c.size()));
        counts = rule.decode_counts((*in.planned)[b], n0, budgets[b].tokens_for(n0), keep, held);
      }
      DecodeCut c = decode_cut(rule, meta, D, cached, mode, L, next_end, budgets[b], keep, opt.window, in.layer,
                               cross_layer ? &counts : nullptr, iv.rows.get());
      if (opt.append_only && c.cut) admit_only(c, cached, iv.from);
      const std::shared_ptr<const QuantizedKV> prev_rows = iv.rows;
      iv = Interval{};
      iv.from = L;
      iv.rows = c.cut ? held_rows_after(prev_rows.get(), c, D, L) : prev_rows;
      iv.state.mode = c.mode;
      iv.state.cached = std::move(c.cached);
      if (!c.cut) continue;
      if (units != 0 && static_cast<int>(iv.state.cached.size()) != units)
        fail(rule.spec(), "--protocol decode", "changed its selection units between compressions");
      units = static_cast<int>(iv.state.cached.size());
      iv.stepwise = c.stepwise;
      iv.view = c.view;
      if (stats) ++(*stats)[b].compressions;
    }
    if (units == 0) units = D.num_kv_heads;  // never cut: the full cache, one set per KV head
    const GqaMode mode = intervals.back().stepwise ? intervals.back().stepwise->mode : intervals.back().state.mode;
    Selection s(mode, units, n0);
    const bool stepwise = std::any_of(intervals.begin(), intervals.end(), [](const Interval& v) { return v.stepwise; });
    const bool rows = std::any_of(intervals.begin(), intervals.end(), [](const Interval& v) { return v.rows; });
    if (stepwise) {  // a step-wise rule's own masks: one per query
      s.per_query.resize(static_cast<std::size_t>(units * ne));
      for (const Interval& v : intervals)
        for (int u = 0; u < units; ++u)
          for (i64 q = v.q0; q < v.q1; ++q) s.per_query[u * ne + q] = query_mask(v, u, q, eval_pos[q]);
    }
    // One held cache per interval (Selection::held_caches): the caches themselves, or (a step-wise
    // rule, whose per-query masks decide the support) the rows each interval gives back.
    if (!stepwise || rows) {
      s.held_of.assign(static_cast<std::size_t>(ne), 0);
      for (const Interval& v : intervals) {
        Selection::HeldCache c;
        c.from = v.from;
        c.held.assign(static_cast<std::size_t>(units * v.from), 0);
        for (int u = 0; u < units; ++u)
          for (i64 p : unit_list(v.state.cached, static_cast<std::size_t>(u))) c.held[u * v.from + p] = 1;
        c.rows = v.rows;
        for (i64 q = v.q0; q < v.q1; ++q) s.held_of[q] = static_cast<int>(s.held_caches.size());
        s.held_caches.push_back(std::move(c));
      }
    }
    std::vector<std::uint8_t> m;
    for (int u = 0; u < units; ++u) {
      s.query_mask(u, ne - 1, eval_pos[ne - 1], m);
      for (i64 j = 0; j < n0; ++j) s.unit_mask(u)[j] = m[j];
      if (!stats) continue;
      for (const Interval& v : intervals) {  // a held cache's count once, not a mask per query
        const i64 held = stepwise ? 0 : static_cast<i64>(unit_list(v.state.cached, static_cast<std::size_t>(u)).size());
        for (i64 q = v.q0; q < v.q1; ++q) count_cache_tokens((*stats)[b], s, u, q, eval_pos[q], held, v.from, stepwise, m);
      }
    }
    const auto& last_rows = intervals.back().rows;
    if (last_rows && last_rows->has_values()) s.kept_bytes = held_bytes(s, *last_rows, n0);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace kvsim
