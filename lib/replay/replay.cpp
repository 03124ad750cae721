#include "replay/replay.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "attention/layer_reference.h"
#include "attention/norm_cache.h"
#include "attention/perturbation.h"
#include "core/core_share.h"
#include "core/curve_mean.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/run_header.h"
#include "core/sha256.h"
#include "core/ranges.h"
#include "core/output_folder.h"
#include "core/output_path.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/isa.h"
#include "replay/decode_protocol.h"
#include "replay/layer_plans.h"
#include "replay/selection_file.h"
#include "rules/factory.h"
#include "rules/rule_labels.h"
#include "rules/window_attention.h"
#include "trace/trace_reader.h"
#include "trace/trace_summary.h"

namespace kvsim {

namespace {

struct Totals {  // sums over layers of the layer rows, one per (rule, budget)
  double budget_tokens = 0, kept = 0, cache_ratio = 0, select_s = 0;
  std::array<double, kNumMetrics> values{};
  int layers = 0;
  double tied_sum = 0;  // Selection::tied_at_cut over layers and units
  i64 tied_units = 0, tied_max = 0;
  double decode_cache_tokens = 0;  // decode protocol: sums over layers
  i64 decode_compressions = 0;
  std::vector<double> question_l1;  // multi-question traces: per question, sum over layers of its pert_l1
  std::vector<int> question_layers;
  double mean(std::size_t metric) const { return values[metric] / (layers > 0 ? layers : 1); }
};

// summary_auc_schema(): each summary metric's mean over the rule's kept-fraction range, by
// trapezoids between its budgets (budgets with the same kept fraction averaged first). Null
// with fewer than two distinct fractions.
Json budget_auc(const std::vector<Totals>& budgets, i64 n_c) {
  std::map<double, std::pair<std::array<double, kNumMetrics>, int>> curve;  // fraction -> (sum, count)
  for (const Totals& t : budgets) {
    const double x = t.kept / (t.layers > 0 ? t.layers : 1) / static_cast<double>(n_c > 0 ? n_c : 1);
    auto& [sum, count] = curve[x];
    for (std::size_t m = 0; m < kNumMetrics; ++m) sum[m] += t.mean(m);
    ++count;
  }
  if (curve.size() < 2) return nullptr;
  const double from = curve.begin()->first, to = curve.rbegin()->first;
  Json j = {{"from", from}, {"to", to}, {"points", static_cast<i64>(curve.size())}};
  std::vector<double> x;
  for (const auto& point : curve) x.push_back(point.first);
  for (std::size_t m = 0; m < kNumMetrics; ++m) {
    if (kMetricColumns[m].summary.empty()) continue;
    std::vector<double> y;  // the metric's mean at each fraction
    for (const auto& [fraction, sum_count] : curve) y.push_back(sum_count.first[m] / sum_count.second);
    j[std::string(kMetricColumns[m].summary)] = trapezoid_mean(x, y);
  }
  return j;
}

Json summary_json(const ReplayOptions& opt, const ReplaySetup& s, const std::vector<std::vector<Totals>>& tot,
                  const Json& timings, const std::string& trace_sha256) {
  const TraceMeta& meta = s.meta;
  const Protocol& p = s.protocol;
  Json j = run_header(opt.command, kernels::isa_name(kernels::active_isa()));
  j["trace"] = trace_summary(meta, opt.trace_path, trace_sha256);
  if (!s.questions.empty()) {  // a multi-question trace: each question's evaluation positions
    Json qs = Json::array();
    for (const QuestionSpan& q : s.questions) qs.push_back({{"question", q.k}, {"begin", q.begin}, {"end", q.end}});
    j["questions"] = std::move(qs);
  }
  j["protocol"] = {{"compression_point", compression_point_name(opt.protocol.compression_point)},
                   {"n_c", p.n_c},
                   {"window", opt.protocol.window},
                   {"eval", eval_mode_name(opt.protocol.eval)},
                   {"n_eval_queries", static_cast<i64>(p.eval_rows.size())},
                   {"name", opt.protocol.decode() ? "decode" : "oneshot"},
                   {"every", opt.protocol.decode_every},
                   {"decode_start", opt.protocol.decode() ? decode_start_name(opt.protocol) : ""},
                   {"admission", opt.protocol.decode() ? admission_name(opt.protocol) : ""},
                   {"layers", s.layers}};
  j["projected"] = meta.has_o_proj;
  j["value_norm"] = norm_kind_name(opt.nu);
  j["gqa_note"] = std::string("kv mode: one kept set per KV head shared by its ") + std::to_string(meta.group_size()) +
                  " query heads (head rows report the KV head's kept count); query mode: one set per query head";
  Json rules = Json::array();
  for (std::size_t r = 0; r < s.rules.size(); ++r) {
    Json budgets = Json::array();
    for (std::size_t b = 0; b < s.budgets.size(); ++b) {
      const Totals& t = tot[r][b];
      const double n = t.layers > 0 ? t.layers : 1;
      // The fields of summary_budget_schema(), in its order.
      Json e = {{"budget", s.budgets[b].text}, {"budget_tokens_mean", t.budget_tokens / n}, {"kept_tokens_mean", t.kept / n},
                {"cache_ratio_mean", t.cache_ratio / n}};
      for (std::size_t m = 0; m < kNumMetrics; ++m)
        if (!kMetricColumns[m].summary.empty()) e[std::string(kMetricColumns[m].summary)] = t.mean(m);
      e["select_seconds"] = t.select_s;
      if (!t.question_l1.empty()) {  // multi-question traces: what serves every question, not one
        Json per = Json::array();
        double worst = -INFINITY, best = INFINITY;
        for (std::size_t k = 0; k < t.question_l1.size(); ++k) {
          const double m = t.question_layers[k] ? t.question_l1[k] / t.question_layers[k] : NAN;
          per.push_back(m);
          if (std::isfinite(m)) worst = std::max(worst, m), best = std::min(best, m);
        }
        e["question_pert_l1"] = std::move(per);
        e["question_pert_l1_worst"] = worst;
        e["question_pert_l1_spread"] = best > 0 ? worst / best : NAN;
      }
      if (opt.protocol.decode()) {
        e["decode_cache_tokens_mean"] = t.decode_cache_tokens / n;
        e["decode_compressions"] = t.decode_compressions;
      }
      if (t.tied_units > 0) {  // rules that rank by scores: how often the cut fell inside a tie
        e["tied_at_cut_mean"] = t.tied_sum / static_cast<double>(t.tied_units);
        e["tied_at_cut_max"] = t.tied_max;
      }
      budgets.push_back(std::move(e));
    }
    Json rule = {{"spec", s.rules[r]->spec()}, {"budgets", std::move(budgets)}};
    const Json auc = budget_auc(tot[r], p.n_c);
    if (!auc.is_null()) rule["auc"] = auc;
    rules.push_back(std::move(rule));
  }
  j["rules"] = std::move(rules);
  j["timings"] = timings;
  j["peak_rss_bytes"] = static_cast<i64>(peak_rss_bytes());
  return j;
}

std::string summary_table(const ReplaySetup& s, const std::vector<std::vector<Totals>>& tot) {
  char line[512];
  std::snprintf(line, sizeof line, "%-44s %8s %9s %9s %12s %14s %12s\n", "rule", "budget", "kept", "mean F",
                "pert_l1", "bound_critical", "bound_ada");
  std::string out = line;
  int flagged = 0;
  // Short labels (parameters at their defaults dropped); metrics.csv keeps the full specs.
  std::vector<std::string> specs;
  for (const auto& rule : s.rules) specs.push_back(rule->spec());
  const auto labels = short_rule_labels(specs);
  for (std::size_t r = 0; r < s.rules.size(); ++r)
    for (std::size_t b = 0; b < s.budgets.size(); ++b) {
      const Totals& t = tot[r][b];
      const double n = t.layers > 0 ? t.layers : 1;
      std::string spec = labels.at(specs[r]);
      if (spec.size() > 44) spec = spec.substr(0, 41) + "...";
      // * : the rule kept another number of tokens than the budget gives every other rule
      // (chunkkv's whole chunks, pyramid(variant=int)'s overshoot), beyond a token or 1% of
      // rounding, so its row is not at matched kept tokens.
      const double nominal = static_cast<double>(s.budget_tokens[b]);  // -1: a threshold (no count)
      // A memory budget is matched in bytes: cache_ratio at most F (a rule whose counts vary per
      // unit or layer can overshoot the uniform count's bytes) and within 0.01 of it; the others
      // in kept tokens.
      const bool memory = s.budgets[b].kind == Budget::Kind::memory;
      const double F = s.budgets[b].value, ratio = t.cache_ratio / n;
      // Under the decode protocol "kept" is the mean cache of an evaluation query, not a count at n_c.
      const bool decode = s.protocol.decode;
      const bool off_budget = !decode && (memory ? ratio > F * (1 + 1e-9) || ratio < F - 0.01
                                                 : nominal >= 0 && std::abs(t.kept / n - nominal) > std::max(1.0, 0.01 * nominal));
      if (off_budget) ++flagged;
      std::snprintf(line, sizeof line, "%-44s %8s %9.1f%s%9.4f %12.5g %14.5g %12.5g\n", spec.c_str(),
                    s.budgets[b].text.c_str(), decode ? t.decode_cache_tokens / n : t.kept / n, off_budget ? "*" : " ", t.mean(metric_index("retained_mass")),
                    t.mean(metric_index("pert_l1")), t.mean(metric_index("bound_critical")),
                    t.mean(metric_index("bound_ada")));
      out += line;
    }
  if (flagged > 0)
    out += "* kept (mean per head and layer) differs from the budget's tokens by more than 1 token or 1% (mem=F: "
           "cache_ratio above F, or below it by more than 0.01): not at matched kept tokens (bytes)\n";
  return out;
}

}  // namespace

void ReplayTimings::add(const ReplayTimings& o) {
  read += o.read;
  attention += o.attention;
  select += o.select;
  metrics += o.metrics;
  nu_hits += o.nu_hits;
  nu_misses += o.nu_misses;
  threads_min = threads_min == 0 ? o.threads_min : (o.threads_min == 0 ? threads_min : std::min(threads_min, o.threads_min));
  threads_max = std::max(threads_max, o.threads_max);
  prob_tiles_peak_bytes = std::max(prob_tiles_peak_bytes, o.prob_tiles_peak_bytes);
}

ReplaySetup prepare_replay(const ReplayOptions& opt, const TraceMeta& meta) {
  ReplaySetup s;
  s.meta = meta;
  s.protocol = resolve_protocol(meta, opt.protocol);
  s.layers = parse_index_list(opt.layers, meta.num_layers, "--layers");
  s.heads = parse_index_list(opt.heads, meta.num_heads, "--heads");
  s.budgets = parse_budgets(opt.budgets);
  if (s.budgets.empty()) fail("--budgets", "", "at least one budget is required");
  for (const auto& b : s.budgets) {
    try {
      b.check_layers(meta.num_layers);
      if (b.kind == Budget::Kind::threshold) {  // counted by the rule, layer by layer
        s.budget_tokens.push_back(-1);
        continue;
      }
      // Decoding from a full cache: a token count may exceed n_c (the cache grows to it first).
      if (opt.protocol.decode() && !opt.protocol.decode_start_compressed && b.kind == Budget::Kind::tokens &&
          b.per_layer.empty()) {
        s.budget_tokens.push_back(static_cast<i64>(b.value));
        continue;
      }
      // Every layer's count valid; a per-layer budget's nominal count is its layers' mean.
      double sum = 0;
      for (int l : s.layers) sum += static_cast<double>(b.for_layer(l).tokens_for(s.protocol.n_c));
      s.budget_tokens.push_back(b.per_layer.empty() ? b.tokens_for(s.protocol.n_c)
                                                    : std::llround(sum / static_cast<double>(s.layers.size())));
    } catch (const Error& e) {
      fail("--budgets", b.text,
           std::string(e.what()) + " (compressible span n_c = " + std::to_string(s.protocol.n_c) + ")");
    }
  }
  s.rules = make_rules(opt.rules);
  if (s.rules.empty()) fail("--rules", "", "at least one rule is required");
  s.questions = trace_questions(meta.spans);
  for (const auto& r : s.rules) check_threshold_budgets(*r, s.budgets);
  if (opt.nu == NormKind::upper)  // say up front which rules still pay for exact norms
    for (const auto& r : s.rules) {
      const std::string spec = r->spec();
      if (spec.find("norm=l1") != std::string::npos || spec.find("norm=l2") != std::string::npos)
        std::cerr << "kvsim replay: note: --nu upper sets the bounds' norm; " << spec
                  << " still computes exact value norms for its own scoring (write norm=upper in its spec to avoid them)\n";
    }
  return s;
}

std::vector<LayerTotal> replay_layers(const ReplayOptions& opt, const ReplaySetup& setup, const TraceReader& reader,
                                      const std::vector<int>& layers, const ReplaySinks& sinks, ReplayTimings& tm,
                                      Progress* progress) {
  const TraceMeta& meta = setup.meta;
  const Protocol& p = setup.protocol;
  const auto& budgets = setup.budgets;
  const auto& rules = setup.rules;
  std::vector<std::pair<QuerySet, std::string>> sets;
  if (p.eval_queries) sets.push_back({QuerySet::eval, "queries"});
  if (p.eval_window) sets.push_back({QuerySet::window, "window"});
  const QuerySet summary_set = p.eval_queries ? QuerySet::eval : QuerySet::window;
  const int G = meta.group_size();
  std::unique_ptr<NormCache> nu_cache;
  if (!opt.nu_cache_dir.empty()) nu_cache = std::make_unique<NormCache>(opt.nu_cache_dir);

  std::vector<std::string> specs;
  for (const auto& rule : rules) specs.push_back(rule->spec());
  const auto labels = short_rule_labels(specs);  // the label column: unique within the run

  std::vector<const Rule*> rule_ptrs;
  for (const auto& rule : setup.rules) rule_ptrs.push_back(rule.get());
  const auto plans = plan_layers(meta, p, reader, setup.layers, rule_ptrs, budgets);

  std::vector<LayerTotal> totals;
  // --threads 0 (the default): OpenMP's count is the ceiling, lowered while other processes keep
  // cores busy; --threads N: exactly N.
  CoreShare share(max_threads(), opt.threads == 0);
  // The next layer is read on a second thread while this one is replayed (reading is serial
  // HDF5 + widening). HDF5 is not thread-safe here, so not while selection.h5 is being written.
  const bool prefetch = !sinks.file && layers.size() > 1;
  std::future<LayerData> next;
  for (std::size_t li = 0; li < layers.size(); ++li) {
    const int l = layers[li];
    if (progress) progress->set_note("layer " + std::to_string(l));
    Stopwatch sw;
    // Shared so that a rule may keep views of it (Python rules' numpy arrays).
    const auto owner = std::make_shared<const LayerData>(li > 0 && prefetch ? next.get() : reader.read_layer(l));
    const LayerData& data = *owner;  // all stored query rows
    tm.read += sw.seconds();  // with prefetch: the time spent waiting for it
    if (prefetch && li + 1 < layers.size())
      next = std::async(std::launch::async, [&reader, n = layers[li + 1]] { return reader.read_layer(n); });
    sw.reset();
    LayerCache cache(meta, data, p.n_c, p.eval_rows, p.window_rows);
    cache.set_norm_cache(nu_cache.get());
    WindowAttentionMemo window_memo;  // snapkv-family rules share the window attention
    const RuleInput in = RuleInput::of_layer(meta, l, owner, p.n_c, p.eval_rows, &cache, &window_memo);
    // Every rule selects first; then all their budgets are measured in one walk over the KV
    // groups, so each group's attention probabilities are computed once and freed after use.
    std::vector<std::vector<Selection>> rule_sels;
    std::vector<std::vector<DecodeStats>> rule_decode;  // [rule][budget] under the decode protocol
    std::vector<double> select_s;
    std::vector<Budget> layer_budgets;  // per-layer budgets resolved to this layer's (rules doc 1.4)
    for (const auto& b : budgets) layer_budgets.push_back(b.for_layer(l));
    for (std::size_t r = 0; r < rules.size(); ++r) {
      share.apply();
      sw.reset();
      std::vector<std::vector<i64>> planned;  // a cross-layer rule's counts of this layer
      RuleInput rule_in = in;
      if (!plans[r].empty()) {
        for (const auto& per_budget : plans[r]) planned.push_back(per_budget.at(l));
        rule_in.planned = &planned;
      }
      std::vector<DecodeStats> decode_stats;
      if (p.decode) {
        const DecodeOptions dopt{opt.protocol.decode_every, opt.protocol.decode_start_compressed, opt.protocol.window,
                                 opt.protocol.decode_append_only};
        rule_sels.push_back(decode_select(*rules[r], rule_in, layer_budgets, dopt, &decode_stats));
      } else {
        rule_sels.push_back(rules[r]->select(rule_in, layer_budgets));
      }
      rule_decode.push_back(std::move(decode_stats));
      select_s.push_back(sw.seconds());
      tm.select += select_s.back();
      if (rule_sels.back().size() != budgets.size())
        fail(rules[r]->spec(), "select", "returned " + std::to_string(rule_sels.back().size()) + " selections for " +
                                             std::to_string(budgets.size()) + " budgets");
      if (progress) progress->advance();
    }
    share.apply();
    sw.reset();
    std::vector<std::vector<std::vector<PerturbationResult>>> results;  // [set][rule][budget]
    double core_s = 0;
    for (const auto& s : sets) results.push_back(measure_rules(cache, s.first, opt.nu, rule_sels, &core_s));
    tm.attention += core_s;
    for (std::size_t r = 0; r < rules.size(); ++r) {
      const auto& sels = rule_sels[r];
      const std::string spec = rules[r]->spec();
      for (std::size_t b = 0; b < budgets.size(); ++b) {
        if (sinks.file)
          sinks.file->write(static_cast<int>(r), static_cast<int>(b), l, sels[b], spec, budgets[b].text,
                            meta.num_kv_heads);
        if (sinks.kept) {
          SavedSelection saved{static_cast<int>(r), static_cast<int>(b), l, spec, budgets[b].text, meta.num_kv_heads,
                               sels[b]};
          saved.selection.per_query.clear();
          sinks.kept->push_back(std::move(saved));
        }
        for (std::size_t si = 0; si < sets.size(); ++si) {
          const PerturbationResult& res = results[si][r][b];
          // The rule's own layer budget when it has one (pyramid), else the nominal budget.
          const i64 layer_budget =
              sels[b].budget_tokens >= 0                                         ? sels[b].budget_tokens
              : p.decode && layer_budgets[b].kind == Budget::Kind::tokens ? static_cast<i64>(layer_budgets[b].value)
                                                                          : layer_budgets[b].tokens_for(p.n_c);
          RowKey key{spec, labels.at(spec), budgets[b].text, layer_budget, l, sets[si].second, meta.head_dim};
          NullRowSink none;
          const auto agg = write_metric_rows(sinks.metrics ? *sinks.metrics : none, key, sels[b], res, setup.heads, G);
          std::vector<i64> pos;
          for (i64 qi = 0; qi < res.n_q; ++qi) pos.push_back(cache.pos(sets[si].first, qi));
          if (sinks.per_query) write_per_query_rows(*sinks.per_query, key, sels[b], res, pos, setup.heads, G);
          std::vector<double> question_l1;
          if (!setup.questions.empty() && sets[si].first == QuerySet::eval)
            question_l1 = write_per_question_rows(sinks.per_question ? *sinks.per_question : none, key, sels[b], res,
                                                  pos, setup.questions, G);
          if (sets[si].first != summary_set) continue;
          LayerTotal t;
          t.rule = static_cast<int>(r);
          t.budget = static_cast<int>(b);
          t.layer = l;
          t.budget_tokens = static_cast<double>(layer_budget);
          t.select_seconds = select_s[r] / static_cast<double>(budgets.size());  // one select() serves all budgets
          t.agg = agg;
          t.question_pert_l1 = std::move(question_l1);
          if (!rule_decode[r].empty()) {
            t.decode_cache_tokens = rule_decode[r][b].mean_cache_tokens();
            t.decode_compressions = rule_decode[r][b].compressions;
          }
          for (i64 x : sels[b].tied_at_cut) {
            t.tied_sum += static_cast<double>(x);
            t.tied_max = std::max(t.tied_max, x);
            ++t.tied_units;
          }
          totals.push_back(t);
        }
      }
    }
    tm.metrics += sw.seconds() - core_s;
    tm.prob_tiles_peak_bytes = std::max(tm.prob_tiles_peak_bytes, static_cast<i64>(cache.prob_bytes_peak()));
  }
  share.restore();  // the summary's header records the ceiling
  if (share.max_used() > 0) {
    const ReplayTimings used{.threads_min = share.min_used(), .threads_max = share.max_used()};
    tm.add(used);
  }
  if (nu_cache) {
    tm.nu_hits += nu_cache->hits();
    tm.nu_misses += nu_cache->misses();
  }
  return totals;
}

NormKind parse_bound_norm(const std::string& s) {
  if (s == "exact") return NormKind::l1;
  if (s == "upper") return NormKind::upper;
  fail("--nu", s, "must be exact or upper");
}

ReplaySummary replay_summary(const ReplayOptions& opt, const ReplaySetup& setup, std::vector<LayerTotal> totals,
                             const ReplayTimings& tm, double total_seconds, const std::string& trace_sha256) {
  // Sum in the order one run accumulates: layer by layer (setup.layers order), then rule, budget.
  std::map<int, std::size_t> order;
  for (std::size_t i = 0; i < setup.layers.size(); ++i) order[setup.layers[i]] = i;
  std::stable_sort(totals.begin(), totals.end(), [&](const LayerTotal& a, const LayerTotal& b) {
    return std::tie(order[a.layer], a.rule, a.budget) < std::tie(order[b.layer], b.rule, b.budget);
  });
  std::vector<std::vector<Totals>> tot(setup.rules.size(), std::vector<Totals>(setup.budgets.size()));
  for (const LayerTotal& lt : totals) {
    Totals& t = tot.at(lt.rule).at(lt.budget);
    t.select_s += lt.select_seconds;
    t.tied_sum += lt.tied_sum;
    t.tied_max = std::max(t.tied_max, lt.tied_max);
    t.tied_units += lt.tied_units;
    t.decode_cache_tokens += lt.decode_cache_tokens;
    t.question_l1.resize(lt.question_pert_l1.size(), 0.0);
    t.question_layers.resize(lt.question_pert_l1.size(), 0);
    for (std::size_t k = 0; k < lt.question_pert_l1.size(); ++k)
      if (std::isfinite(lt.question_pert_l1[k])) t.question_l1[k] += lt.question_pert_l1[k], ++t.question_layers[k];
    t.decode_compressions += lt.decode_compressions;
    t.budget_tokens += lt.budget_tokens;
    t.kept += lt.agg.kept_tokens;
    t.cache_ratio += lt.agg.cache_ratio;
    for (std::size_t m = 0; m < kNumMetrics; ++m) t.values[m] += lt.agg.values[m];
    t.layers += 1;
  }
  // Counts stay integers in the file (64, not 64.0).
  const Json timings = {{"read_seconds", tm.read},
                        {"attention_seconds", tm.attention},
                        {"select_seconds", tm.select},
                        {"metrics_seconds", tm.metrics},
                        {"total_seconds", total_seconds},
                        {"nu_cache_hits", tm.nu_hits},
                        {"nu_cache_misses", tm.nu_misses},
                        {"threads_min", tm.threads_min},
                        {"threads_max", tm.threads_max},
                        {"prob_tiles_peak_mib", static_cast<double>(tm.prob_tiles_peak_bytes) / (1 << 20)}};
  ReplaySummary out{summary_json(opt, setup, tot, timings, trace_sha256), summary_table(setup, tot)};
  if (!opt.out_dir.empty()) write_file_atomic(opt.out_dir + "/summary.json", json_text(out.json));
  return out;
}

ReplayResult replay(const ReplayOptions& opt) {
  Stopwatch total;
  set_thread_count(opt.threads);
  const bool files = !opt.out_dir.empty();
  if (!files && !opt.collect) fail("--out", "", "an output folder is required");
  TraceReader reader(opt.trace_path);
  const ReplaySetup setup = prepare_replay(opt, reader.meta());
  const std::string repeated = repeated_budgets_note(opt.budgets);
  if (!repeated.empty()) std::cerr << "kvsim replay: note: " << repeated << "\n";
  // The trace's digest for summary.json, read on a second thread while the layers are replayed;
  // a run that fails or is interrupted cancels it instead of waiting for the rest of the file.
  struct Digest {
    std::atomic<bool> cancel{false};
    std::future<std::string> value;
    ~Digest() {
      cancel = true;
      if (value.valid()) value.wait();
    }
  } trace_sha256;
  trace_sha256.value = std::async(std::launch::async, [&path = opt.trace_path, &c = trace_sha256.cancel] {
    return file_sha256(path, &c);
  });

  ReplayResult result;
  std::optional<OutputFolder> folder;
  std::optional<AtomicOutFile> metrics, per_query, per_question;
  std::unique_ptr<SelectionFile> selfile;
  std::vector<std::unique_ptr<RowSink>> sinks;  // owners; the last sink of a table is the one used
  const auto add = [&](RowSink* a, RowSink* b) -> RowSink* {
    if (a && b) sinks.push_back(std::make_unique<TeeRowSink>(*a, *b));
    return a && b ? sinks.back().get() : (a ? a : b);
  };
  const auto csv = [&](std::optional<AtomicOutFile>& f, const TableSchema& schema, const char* name) -> RowSink* {
    if (!files) return nullptr;
    f.emplace(folder->path(name));
    sinks.push_back(std::make_unique<CsvRowSink>(f->stream(), schema));
    return sinks.back().get();
  };
  const auto memory = [&](ColumnTable& t, const TableSchema& schema) -> RowSink* {
    if (!opt.collect) return nullptr;
    t = ColumnTable(schema);
    sinks.push_back(std::make_unique<ColumnTableSink>(t));
    return sinks.back().get();
  };
  if (files) folder.emplace("kvsim replay", opt.out_dir, "summary.json");
  ReplaySinks out;
  out.metrics = add(csv(metrics, metrics_schema(), "metrics.csv"), memory(result.metrics, metrics_schema()));
  if (opt.per_query)
    out.per_query = add(csv(per_query, per_query_schema(), "metrics_per_query.csv"),
                        memory(result.per_query, per_query_schema()));
  if (!setup.questions.empty())
    out.per_question = add(csv(per_question, per_question_schema(), "metrics_per_question.csv"),
                           memory(result.per_question, per_question_schema()));
  if (opt.save_selection && files) selfile = std::make_unique<SelectionFile>(folder->path("selection.h5"));
  out.file = selfile.get();
  if (opt.save_selection && opt.collect) out.kept = &result.selection;

  Progress progress("replay", static_cast<std::int64_t>(setup.layers.size() * setup.rules.size()));
  ReplayTimings tm;
  auto totals = replay_layers(opt, setup, reader, setup.layers, out, tm, &progress);
  if (files) {
    // Every file complete before anything is replaced: a failed write leaves the earlier run intact.
    metrics->finish();
    if (per_query) per_query->finish();
    if (per_question) per_question->finish();
    if (selfile) selfile->finish();
    std::vector<std::string> written = {"metrics.csv", "summary.json"};
    if (per_query) written.push_back("metrics_per_query.csv");
    if (per_question) written.push_back("metrics_per_question.csv");
    if (selfile) written.push_back("selection.h5");
    folder->clear_previous(kReplayOutputs, written);
    metrics->commit();
    if (per_query) per_query->commit();
    if (per_question) per_question->commit();
    if (selfile) selfile->commit();
  }
  result.summary = replay_summary(opt, setup, std::move(totals), tm, total.seconds(), trace_sha256.value.get());
  if (files) folder->done();
  return result;
}

void run_replay(const ReplayOptions& opt, std::ostream& table) {
  ReplayOptions o = opt;
  o.collect = false;
  table << replay(o).summary.table;
}

}  // namespace kvsim
