// quant(base, k, v, group, kaxis, vaxis, residual, scheme): KV quantization of the tokens the
// base rule keeps (rules doc 2.33; quant/kv_quant.h has the arithmetic). Evicted tokens are gone,
// protected tokens follow the base, and the kept span of each selection unit (a KV head, or a
// query head in query mode) is quantized in position order: its keys with k bits along kaxis,
// its values with v bits along vaxis. quant(full, ...) is quantization alone.
#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <tuple>

#include "core/error.h"
#include "quant/kv_quant.h"
#include "quant/quantized_kv.h"
#include "rules/registry.h"
#include "rules/rule.h"

namespace kvsim {
namespace {

// Memory budgets (mem=F) as the kept count they allow: the largest m <= n_c whose keys and
// values, quantized under q, fit F of the float16 span (n_c x 4 head_dim bytes). Not monotone in
// m (a token completing a group of G frees G full-precision rows), hence the scan from the top.
std::vector<Budget> counted_budgets(const std::vector<Budget>& budgets, const QuantSpec& q, i64 n_c, int d,
                                    const std::string& spec) {
  std::vector<Budget> out;
  for (const Budget& b : budgets) {
    if (b.kind != Budget::Kind::memory) {
      out.push_back(b);
      continue;
    }
    const double cap = b.value * float16_bytes(n_c, d);
    i64 m = n_c;
    while (m > 0 && kept_bytes(m, d, q) > cap) --m;
    if (m == 0) fail(spec, "budget " + b.text, "not one kept token fits in that share of the cache's bytes");
    Budget t = Budget::parse(std::to_string(m));
    t.text = b.text;
    out.push_back(t);
  }
  return out;
}

// A cross-layer base plans with the counts its memory budgets allow.
class QuantPlanner : public LayerPlanner {
 public:
  QuantPlanner(std::unique_ptr<LayerPlanner> base, QuantSpec q, std::string spec)
      : base_(std::move(base)), q_(q), spec_(std::move(spec)) {}
  void observe(const RuleInput& in) override {
    n_c_ = in.n_c;
    d_ = in.data->head_dim;
    base_->observe(in);
  }
  std::vector<std::map<int, std::vector<i64>>> plan(const std::vector<Budget>& budgets) const override {
    return base_->plan(counted_budgets(budgets, q_, n_c_, d_, spec_));
  }

 private:
  std::unique_ptr<LayerPlanner> base_;
  QuantSpec q_;
  std::string spec_;
  i64 n_c_ = 0;
  int d_ = 0;
};

class QuantRule : public Rule {
 public:
  QuantRule(std::string spec, std::unique_ptr<Rule> base, QuantSpec q)
      : spec_(std::move(spec)), base_(std::move(base)), q_(q) {}
  std::string spec() const override { return spec_; }
  bool takes_threshold() const override { return base_->takes_threshold(); }
  std::unique_ptr<LayerPlanner> layer_planner() const override {
    auto base = base_->layer_planner();
    return base ? std::make_unique<QuantPlanner>(std::move(base), q_, spec_) : nullptr;
  }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    check_groups(in.data->head_dim);
    std::vector<Budget> counted = counted_budgets(budgets, q_, in.n_c, in.data->head_dim, spec_);
    std::vector<Selection> sels = base_->select(in, counted);
    if (!in.planned) fit_memory(in, budgets, counted, sels);
    for (std::size_t b = 0; b < sels.size(); ++b)  // report the count a memory budget became
      if (budgets[b].kind == Budget::Kind::memory && sels[b].budget_tokens < 0)
        sels[b].budget_tokens = counted[b].tokens_for(in.n_c);
    const LayerData& D = *in.data;
    const int G = D.num_heads / D.num_kv_heads, d = D.head_dim;
    for (Selection& sel : sels) {
      if (!sel.per_query.empty() || !sel.key_channels.empty())
        fail(spec_, "base", "a step-wise or channel-pruning base (" + base_->spec() +
                                ") has no single kept cache to quantize");
      auto qkv = std::make_shared<QuantizedKV>();
      qkv->units = sel.units;
      qkv->n_c = sel.n_c;
      qkv->d = d;
      qkv->k.assign(static_cast<std::size_t>(sel.units) * sel.n_c * d, 0.0f);
      qkv->v.assign(qkv->k.size(), 0.0f);
      qkv->bytes.assign(sel.units, 0.0);
      qkv->k_coded.assign(static_cast<std::size_t>(sel.units) * sel.n_c, 0);
      qkv->v_coded.assign(qkv->k_coded.size(), 0);
      qkv->k_coded_row_bytes = coded_row_bytes(d, q_.kbits, q_);
      qkv->v_coded_row_bytes = coded_row_bytes(d, q_.vbits, q_);
      const std::string where = in.meta->path + ": layer " + std::to_string(in.layer);
      std::exception_ptr error;  // the first unit's failure (a float16 overflow), rethrown after the loop
      std::atomic<bool> any_codes{false};
#pragma omp parallel for schedule(dynamic)
      for (int u = 0; u < sel.units; ++u) {
        try {
          if (quantize_unit(D, sel, u, sel.mode == GqaMode::kv ? u : u / G, where, *qkv)) any_codes = true;
        } catch (...) {
#pragma omp critical(quant_error)
          if (!error) error = std::current_exception();
        }
      }
      if (error) std::rethrow_exception(error);
      // Nothing held as codes (16 bits, or every kept token in the residual): the float16 cache,
      // measured on the exact eviction path (bit-identical to the base).
      if (any_codes) sel.quant = std::move(qkv);
    }
    return sels;
  }

 private:
  // Unit u's kept rows of [0, n_c) (KV head g), keys and values quantized in position order into
  // qkv's rows at their positions, and its bytes. Whether any row is held as codes.
  bool quantize_unit(const LayerData& D, const Selection& sel, int u, int g, const std::string& where,
                     QuantizedKV& qkv) const {
    const int d = D.head_dim;
    std::vector<i64> pos;
    for (i64 j = 0; j < sel.n_c; ++j)
      if (sel.unit_mask(u)[j]) pos.push_back(j);
    const i64 m = static_cast<i64>(pos.size());
    std::vector<float> rows(static_cast<std::size_t>(m) * d);
    bool codes = false;
    for (int side = 0; side < 2; ++side) {
      for (i64 i = 0; i < m; ++i) std::copy_n(side == 0 ? D.k_row(g, pos[i]) : D.v_row(g, pos[i]), d, rows.data() + i * d);
      const QuantizedRows r = quantize_rows(rows.data(), m, d, side == 0 ? q_.kbits : q_.vbits,
                                            side == 0 ? q_.kaxis : q_.vaxis, q_, where + (side == 0 ? " keys" : " values"));
      float* dst = side == 0 ? qkv.k.data() : qkv.v.data();
      std::uint8_t* coded = (side == 0 ? qkv.k_coded : qkv.v_coded).data() + static_cast<std::size_t>(u) * sel.n_c;
      for (i64 i = 0; i < m; ++i) {
        std::copy_n(r.xhat.data() + i * d, d, dst + (static_cast<std::size_t>(u) * sel.n_c + pos[i]) * d);
        coded[pos[i]] = i < r.quantized_rows;  // the first rows in position order are held as codes
      }
      qkv.bytes[u] += r.bytes;
      codes = codes || r.quantized_rows > 0;
    }
    return codes;
  }

  // Bytes of a selection's kept spans, from its per-unit counts alone (quantized_bytes).
  double selection_bytes(const Selection& sel, int d) const {
    double bytes = 0;
    for (int u = 0; u < sel.units; ++u) bytes += kept_bytes(sel.kept_count(u), d, q_);
    return bytes;
  }

  // A base whose counts vary by unit (ada, critical) spends a memory budget's uniform count where
  // the residual and the group rounding cost more per token, and can exceed the budget's bytes:
  // then the largest count whose selection fits, by bisection (one base selection per step).
  void fit_memory(const RuleInput& in, const std::vector<Budget>& budgets, std::vector<Budget>& counted,
                  std::vector<Selection>& sels) const {
    const int d = in.data->head_dim;
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      if (budgets[b].kind != Budget::Kind::memory) continue;
      const double cap = budgets[b].value * float16_bytes(in.n_c, d) * sels[b].units;
      bool uniform = true;  // equal counts: the count's own bytes (or a base that ignores counts: full)
      for (int u = 1; u < sels[b].units; ++u) uniform = uniform && sels[b].kept_count(u) == sels[b].kept_count(0);
      if (uniform || selection_bytes(sels[b], d) <= cap) continue;
      i64 lo = 0, hi = counted[b].tokens_for(in.n_c);  // the count at hi does not fit
      Selection best;
      while (hi - lo > 1) {
        const i64 mid = (lo + hi) / 2;
        Budget t = Budget::parse(std::to_string(mid));
        t.text = budgets[b].text;
        Selection sel = std::move(base_->select(in, {t}).front());
        if (selection_bytes(sel, d) <= cap) {
          lo = mid;
          best = std::move(sel);
          counted[b] = t;
        } else {
          hi = mid;
        }
      }
      if (lo == 0) fail(spec_, "budget " + budgets[b].text, "no kept count of the base fits that share of the bytes");
      sels[b] = std::move(best);
    }
  }

  // Token-axis groups run along a row's channels: G must divide head_dim.
  void check_groups(int d) const {
    for (auto [bits, axis, side] : {std::tuple{q_.kbits, q_.kaxis, "kaxis"}, {q_.vbits, q_.vaxis, "vaxis"}})
      if (!groups_fit(d, bits, axis, q_))
        fail(spec_, "group", std::to_string(q_.group) + " does not divide head_dim " + std::to_string(d) + " (" +
                                 side + "=token groups run along a row's channels)");
  }

  std::string spec_;
  std::unique_ptr<Rule> base_;
  QuantSpec q_;
};

KVSIM_RULE((RuleInfo{"quant",
                     "KV quantization of the base rule's kept tokens (KIVI-style asym/sym groups or OCP FP8), "
                     "measured exactly; quant(full, ...) is quantization alone",
                     {{"base", "rule", "full", "the eviction rule whose kept tokens are quantized (positional argument)"},
                      {"scheme", "choice asym|sym|fp8e4m3|fp8e5m2", "asym", "code scheme (rules doc 2.33)"},
                      {"k", "int", "2", "key bits: 1-8 (sym 2-8), 16 = not quantized; fp8 schemes: 8"},
                      {"v", "int", "2", "value bits, as k"},
                      {"group", "int", "32", "values sharing a scale and zero point"},
                      {"kaxis", "choice channel|token", "channel",
                       "keys: channel = a scale per channel over G tokens (KIVI), token = per token over G channels"},
                      {"vaxis", "choice token|channel", "token", "values: as kaxis (KIVI: token)"},
                      {"residual", "int", "128", "last kept tokens left in full precision (KIVI's residual)"}},
                     /*in_all=*/false,
                     /*example=*/"quant(snapkv)"}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = r.get_rule_or(0, "full");
             QuantSpec q;
             q.scheme = parse_quant_scheme(r.get_choice("scheme", "asym", {"asym", "sym", "fp8e4m3", "fp8e5m2"}));
             const bool fp8 = is_fp8(q.scheme);
             const int def_bits = fp8 ? 8 : 2;
             q.kbits = static_cast<int>(r.get_int("k", def_bits, 1, 16));
             q.vbits = static_cast<int>(r.get_int("v", def_bits, 1, 16));
             for (int b : {q.kbits, q.vbits}) {
               if (fp8 && b != 8 && b != 16) r.error("an fp8 scheme stores 8 bits (or 16: that side not quantized)");
               if (!fp8 && b > 8 && b != 16) r.error("bits must be 1-8, or 16 (not quantized)");
               if (q.scheme == QuantScheme::sym && b < 2) r.error("sym needs at least 2 bits (a sign and a level)");
             }
             q.group = r.get_int("group", 32, 1, 1 << 20);
             q.kaxis = r.get_choice("kaxis", "channel", {"channel", "token"}) == "channel" ? QuantAxis::channel
                                                                                          : QuantAxis::token;
             q.vaxis = r.get_choice("vaxis", "token", {"token", "channel"}) == "channel" ? QuantAxis::channel
                                                                                        : QuantAxis::token;
             q.residual = r.get_int("residual", 128, 0, 1LL << 40);
             return std::make_unique<QuantRule>(r.canonical(), std::move(base), q);
           });

}  // namespace
}  // namespace kvsim
