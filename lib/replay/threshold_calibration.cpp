#include "replay/threshold_calibration.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "rules/factory.h"
#include "rules/scored_rule.h"
#include "trace/trace_reader.h"

namespace kvsim {

ThresholdCalibration calibrate_threshold(const std::string& trace, const std::string& spec, double fraction,
                                         const ProtocolOptions& protocol) {
  if (!(fraction > 0 && fraction <= 1)) fail("calibrate_threshold", "fraction", "must be in (0, 1]");
  const auto rule = make_rule(spec);
  const auto* scored = dynamic_cast<const ScoredRule*>(rule.get());
  if (!scored || !scored->plain()) fail(rule->spec(), "", "a threshold needs a plain scorer or dms(...)");
  TraceReader reader(trace);
  const TraceMeta& meta = reader.meta();
  const Protocol p = resolve_protocol(meta, protocol);
  std::vector<float> scores;  // every candidate's score over layers and units
  long long total = 0, protected_count = 0;
  for (int l = 0; l < meta.num_layers; ++l) {
    const auto data = std::make_shared<const LayerData>(reader.read_layer(l));
    LayerCache cache(meta, *data, p.n_c, p.eval_rows, p.window_rows);
    const UnitScores s = scored->scores(RuleInput::of_layer(meta, l, data, p.n_c, p.eval_rows, &cache));
    if (s.log_space) fail(rule->spec(), "", "scores are logs here (space=log): write the rule with space=linear");
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < s.n_c; ++j)
        if (!s.protect[j]) scores.push_back(s.unit(u)[j]);
    total += static_cast<long long>(s.units) * s.n_c;
    protected_count += static_cast<long long>(s.units) * s.n_protected;
  }
  const long long want = static_cast<long long>(std::ceil(fraction * static_cast<double>(total) - 1e-9));
  const long long need = want - protected_count;
  if (need < 0)
    fail(rule->spec(), "", "protected tokens alone keep " + std::to_string(protected_count) + " of " +
                               std::to_string(total) + " tokens, more than the fraction asks");
  ThresholdCalibration c;
  c.candidates = static_cast<long long>(scores.size());
  if (need == 0) {  // nothing but the protected tokens: above every score
    c.threshold = scores.empty() ? 0.0
                                 : static_cast<double>(std::nextafter(*std::max_element(scores.begin(), scores.end()),
                                                                      INFINITY));
  } else {
    const long long k = std::min<long long>(need, c.candidates);
    std::nth_element(scores.begin(), scores.begin() + (k - 1), scores.end(), std::greater<float>());
    c.threshold = scores[static_cast<std::size_t>(k - 1)];  // the k-th largest: thr keeps >= k (ties)
  }
  long long kept = protected_count;
  for (float x : scores) kept += x >= c.threshold;
  c.kept_fraction = static_cast<double>(kept) / static_cast<double>(total);
  return c;
}

}  // namespace kvsim
