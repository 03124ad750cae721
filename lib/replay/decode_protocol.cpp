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
                     i64 keep, int window, int layer, const std::vector<i64>* planned) {
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
  auto view = std::make_shared<const DecodeView>(make_decode_view(meta, D, cached, mode, L, E, window));
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
  if (!sel.key_channels.empty() || sel.quant)
    fail(rule.spec(), "--protocol decode",
         "prunes key channels or quantizes its cache: one compression point only (--every larger than the "
         "generation)");
  const CacheState next = state_after(sel, *view);
  out.mode = next.mode;
  out.cached = next.cached;
  out.cut = true;
  if (!sel.per_query.empty()) {
    out.stepwise = std::make_shared<const Selection>(std::move(sel));
    out.view = view;
  }
  return out;
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
};

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
    if (opt.start_compressed) return first;
    std::vector<Selection> full;
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      full.emplace_back(GqaMode::kv, D.num_kv_heads, n0);
      std::fill(full.back().kept.begin(), full.back().kept.end(), 1);
    }
    return full;
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
      // Compression at L: each unit holds its cached tokens plus [from, L), or after a step-wise
      // interval what the rule's mask of the interval's last query held (and the tokens after it).
      const i64 L = end;
      std::vector<std::vector<i64>> cached;
      const int held_units = iv.stepwise ? iv.stepwise->units : static_cast<int>(iv.state.cached.size());
      for (int u = 0; u < held_units; ++u) {
        std::vector<i64> c;
        i64 next = iv.from;
        if (iv.stepwise && iv.q1 > iv.q0) {
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
      const GqaMode mode = iv.stepwise ? iv.stepwise->mode : iv.state.mode;
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
                               cross_layer ? &counts : nullptr);
      if (opt.append_only && c.cut) admit_only(c, cached, iv.from);
      iv = Interval{};
      iv.from = L;
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
    if (stepwise) {  // a step-wise rule's own masks: one per query
      s.per_query.resize(static_cast<std::size_t>(units * ne));
      for (const Interval& v : intervals)
        for (int u = 0; u < units; ++u)
          for (i64 q = v.q0; q < v.q1; ++q) s.per_query[u * ne + q] = query_mask(v, u, q, eval_pos[q]);
    } else {  // one held cache per interval (Selection::held_caches)
      s.held_of.assign(static_cast<std::size_t>(ne), 0);
      for (const Interval& v : intervals) {
        Selection::HeldCache c;
        c.from = v.from;
        c.held.assign(static_cast<std::size_t>(units * v.from), 0);
        for (int u = 0; u < units; ++u)
          for (i64 p : unit_list(v.state.cached, static_cast<std::size_t>(u))) c.held[u * v.from + p] = 1;
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
        for (i64 q = v.q0; q < v.q1; ++q) {
          i64 c = held + (eval_pos[q] - v.from + 1);
          if (stepwise) {  // a step-wise rule's own masks
            s.query_mask(u, q, eval_pos[q], m);
            c = std::count(m.begin(), m.end(), 1);
          }
          (*stats)[b].cache_tokens_sum += static_cast<double>(c);
          ++(*stats)[b].cache_tokens_count;
        }
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace kvsim
