#include "prefill/prefill_run.h"

#include <numeric>

#include "core/error.h"
#include "core/progress.h"
#include "core/sysinfo.h"
#include "prefill/criticality.h"
#include "trace/trace_reader.h"

namespace kvsim::prefill {

i64 checked_prompt_len(const TraceMeta& meta) {
  const i64 n = meta.prefill_len;
  if (n < 1) fail(meta.path, "prefill_len", "CritiPrefill needs at least one prompt token");
  const auto& q = meta.q_pos;
  for (i64 t = 0; t < n; ++t)
    if (t >= static_cast<i64>(q.size()) || q[static_cast<std::size_t>(t)] != t)
      fail(meta.path, "/q_pos",
           "CritiPrefill needs the query of every prompt position 0.." + std::to_string(n - 1) + "; position " +
               std::to_string(t) + " is not stored (" + std::to_string(q.size()) +
               " stored queries; dump with all queries)");
  return n;
}

PrefillRunResult run_prefill_trace(const std::string& path, const PrefillRunOptions& opt) {
  Stopwatch total;
  PrefillRunResult res;
  TraceReader reader(path);
  res.meta = reader.meta();
  const TraceMeta& meta = res.meta;
  const i64 n = checked_prompt_len(meta);
  // The block-sparse kernels (online softmax) have no soft-capping path.
  if (meta.attn_softcap > 0)
    fail(meta.path, "@attn_logit_softcap",
         "the model soft-caps attention logits (Gemma 2); kvsim prefill simulates plain softmax attention only");
  res.plan = SegmentPlan(n, opt.cfg);
  res.projected = meta.has_o_proj;
  res.anchors = locality_anchors(res.plan, opt.locality_anchors);

  LayerRequest req;
  req.o_proj = meta.has_o_proj;
  req.q_rows.resize(static_cast<std::size_t>(n));
  std::iota(req.q_rows.begin(), req.q_rows.end(), i64{0});

  LayerFusion fusion;
  Progress progress("prefill", meta.num_layers);
  for (int l = 0; l < meta.num_layers; ++l) {
    Stopwatch sw;
    const LayerData data = reader.read_layer(l, req);
    res.read_seconds += sw.seconds();
    const HeadsView x{data.num_heads, data.num_kv_heads, data.head_dim, n, data.q.data(), data.num_q * data.head_dim,
                      data.k.data(), data.v.data(), data.seq_len * data.head_dim, static_cast<float>(meta.attn_scale)};
    const OutProj wo{data.has_o_proj() ? data.o_proj.data() : nullptr, data.hidden_size};

    std::vector<std::string> variants;
    if (opt.fusion_on) variants.push_back("on");
    if (opt.fusion_off) variants.push_back("off");
    if (l < opt.cfg.layer_skip) {  // dense layer: nothing sparsified
      for (const auto& v : variants) {
        LayerMetrics lm;
        lm.layer = l;
        lm.variant = v;
        lm.dense_layer = true;
        lm.heads.resize(static_cast<std::size_t>(data.num_heads));
        res.metrics.push_back(std::move(lm));
      }
    } else {
      sw.reset();
      const CriticalityMap current = estimate_criticality(x, res.plan);
      std::vector<BlockSelection> sels;
      if (opt.fusion_on) sels.push_back(select_blocks(res.plan, fusion.apply(l, current)));
      if (opt.fusion_off) sels.push_back(select_blocks(res.plan, current));
      res.estimate_seconds += sw.seconds();
      sw.reset();
      std::vector<const BlockSelection*> ptrs;
      for (const auto& s : sels) ptrs.push_back(&s);
      auto lms = simulate_layer(x, wo, ptrs);
      for (std::size_t i = 0; i < lms.size(); ++i) {
        lms[i].layer = l;
        lms[i].variant = variants[i];
        res.metrics.push_back(std::move(lms[i]));
      }
      res.simulate_seconds += sw.seconds();
    }
    if (!res.anchors.empty()) {
      sw.reset();
      res.locality.push_back({l, locality_curves(x, res.plan, opt.locality_anchors)});
      res.locality_seconds += sw.seconds();
    }
    progress.advance();
  }
  res.total_seconds = total.seconds();
  return res;
}

}  // namespace kvsim::prefill
