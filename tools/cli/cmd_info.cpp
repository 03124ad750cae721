// kvsim info: what a trace holds (shape, positions, stored queries, optional datasets, size);
// --stats streams every layer and reports read throughput and peak memory.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "trace/crash_guard.h"
#include "trace/stored_selection.h"
#include "trace/trace_reader.h"

namespace kvsim::cli {
namespace {

std::string runs_summary(const std::vector<i64>& pos) {
  std::vector<std::pair<i64, i64>> runs;  // inclusive ranges
  for (i64 p : pos) {
    if (!runs.empty() && runs.back().second + 1 == p) runs.back().second = p;
    else runs.push_back({p, p});
  }
  std::string s;
  for (std::size_t i = 0; i < runs.size() && i < 4; ++i) {
    s += (i ? ", " : "") + std::to_string(runs[i].first);
    if (runs[i].second != runs[i].first) s += "-" + std::to_string(runs[i].second);
  }
  if (runs.size() > 4) s += ", ... (" + std::to_string(runs.size()) + " runs)";
  return s;
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

int cmd_info(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  std::string path;
  po::options_description opts("kvsim info TRACE [--stats]");
  opts.add_options()("help,h", "show this help")("trace", po::value(&path), "trace file")
      ("stats", "read every layer: throughput, value RMS, peak memory");
  const po::variables_map vm = parse_args(args, opts, "trace");
  if (vm.count("help")) {
    std::cout << "Prints a trace's model shape, positions, stored queries, optional datasets, storage\n"
                 "dtype and size. --stats streams every layer (one at a time) and prints read throughput,\n"
                 "RMS of q/k/v and the peak resident memory against one layer's size.\n\n" << opts;
    return 0;
  }
  if (path.empty()) throw po::error("missing TRACE argument");

  CrashGuard guard("kvsim info", path);  // a crash inside HDF5 means a corrupt file
  TraceReader reader(path);
  const TraceMeta& m = reader.meta();
  const i64 ctx = m.context_end();
  const i64 question = m.prefill_len - ctx, gen = m.seq_len - m.prefill_len;
  i64 window = 0, eval = 0;
  for (i64 p : m.q_pos) eval += p >= ctx;
  for (i64 p = ctx - 1; p >= 0 && std::binary_search(m.q_pos.begin(), m.q_pos.end(), p); --p) ++window;
  const double disk = static_cast<double>(std::filesystem::file_size(path));
  const i64 d = m.head_dim;
  const double q_bytes = 4.0 * m.num_heads * m.num_queries() * d, kv_bytes = 4.0 * m.num_kv_heads * m.seq_len * d;
  const double op_bytes = m.has_o_proj ? 4.0 * m.hidden_size * m.num_heads * d : 0.0;
  const double layer_bytes = q_bytes * (m.has_o ? 2 : 1) + 2 * kv_bytes + op_bytes;

  std::printf("trace       %s (%.1f MiB on disk, format v%d)\n", printable(path).c_str(), mib(disk), m.version);
  std::printf("model       %s", printable(m.model).c_str());
  if (!m.source_precision.empty()) std::printf(" (%s)", printable(m.source_precision).c_str());
  if (!m.model_sha256.empty()) std::printf(", sha256 %s", printable(m.model_sha256).c_str());
  std::printf("\nsource      %s\n", printable(m.source).c_str());
  std::printf("shape       %d layers, %d heads, %d KV heads (group %d), head_dim %d, hidden %d\n", m.num_layers,
              m.num_heads, m.num_kv_heads, m.group_size(), m.head_dim, m.hidden_size);
  std::printf("rope        %s, theta %g%s%s; attn_scale %.9g\n", m.rope_style == RopeStyle::half ? "half" : "interleaved",
              m.rope_theta, m.rope_scaling.empty() ? "" : ", scaling ", printable(m.rope_scaling).c_str(), m.attn_scale);
  if (m.rotary_dim > 0) std::printf("            partial rotary: first %d of %d components rotate\n", m.rotary_dim, m.head_dim);
  if (m.attn_softcap > 0) std::printf("softcap     logits soft-capped at %g (c tanh(x / c))\n", m.attn_softcap);
  for (int l = 0; l < static_cast<int>(m.layer_attrs.size()); ++l) {
    const LayerAttrs& a = m.layer_attrs[l];
    if (a.attention_type.empty() && !a.sliding_window && !a.rope_theta && a.rope_scaling.empty()) continue;
    std::printf("layer %-5d %s%s%s%s%s\n", l, a.attention_type.empty() ? "" : printable(a.attention_type).c_str(),
                a.sliding_window ? (", window " + std::to_string(a.sliding_window) + " (>= S: no effect)").c_str() : "",
                a.rope_theta ? (", rope_theta " + std::to_string(a.rope_theta)).c_str() : "",
                a.rope_scaling.empty() ? "" : ", rope_scaling ", printable(a.rope_scaling).c_str());
  }
  std::printf("positions   S = %lld: context %lld, question %lld, generated %lld (prefill_len %lld)\n",
              static_cast<long long>(m.seq_len), static_cast<long long>(ctx), static_cast<long long>(question),
              static_cast<long long>(gen), static_cast<long long>(m.prefill_len));
  std::printf("queries     Nq = %lld at %s\n            window before the compression point: %lld; "
              "evaluation queries (>= %lld): %lld\n",
              static_cast<long long>(m.num_queries()), runs_summary(m.q_pos).c_str(), static_cast<long long>(window),
              static_cast<long long>(ctx), static_cast<long long>(eval));
  std::printf("storage     %s; o_proj %s, o %s\n", dtype_name(m.dtype), m.has_o_proj ? "yes" : "no",
              m.has_o ? "yes" : "no");
  for (const auto& [name, span] : m.spans)
    std::printf("span        %s [%lld, %lld)\n", printable(name).c_str(), static_cast<long long>(span.first),
                static_cast<long long>(span.second));
  if (!m.text.empty()) std::printf("text        %zu bytes\n", m.text.size());
  // Stored selections (e.g. kvpress presses from kvsim-dump --kvpress-press): what
  // external(name=...) can replay, at which budgets.
  for (const auto& name : stored_selection_names(path)) {
    try {
      const StoredSelectionInfo s = StoredSelection(path, name).info();  // a copy: the reader is a temporary
      std::string budgets;
      for (const auto& b : s.budgets) budgets += (budgets.empty() ? "" : ",") + printable(b);
      std::printf("selection   %s: %s, mode %s, n_c %lld%s%s; external(name=%s)%s%s\n", printable(name).c_str(),
                  s.kind.c_str(), s.mode.c_str(), static_cast<long long>(s.n_c), s.source.empty() ? "" : ", from ",
                  printable(s.source).c_str(), printable(name).c_str(),
                  s.kind == "kept" ? " --budgets " : " (any budget)", budgets.c_str());
    } catch (const Error& e) {
      std::printf("selection   %s: unreadable: %s\n", printable(name).c_str(), e.what());
    }
  }
  std::printf("layer size  %.1f MiB as float32 (q %.1f, k %.1f, v %.1f, o_proj %.1f%s)\n", mib(layer_bytes),
              mib(q_bytes), mib(kv_bytes), mib(kv_bytes), mib(op_bytes), m.has_o ? ", o same as q" : "");

  if (!vm.count("stats")) return 0;
  LayerRequest req;
  req.o = m.has_o;
  Stopwatch clock;
  double sq[3] = {0, 0, 0};
  double n[3] = {0, 0, 0};
  for (int l = 0; l < m.num_layers; ++l) {
    const LayerData L = reader.read_layer(l, req);
    const avec<float>* t[3] = {&L.q, &L.k, &L.v};
    for (int i = 0; i < 3; ++i) {
      double s = 0;
      for (float x : *t[i]) s += double(x) * x;
      sq[i] += s;
      n[i] += static_cast<double>(t[i]->size());
    }
  }
  const double secs = clock.seconds();
  const double read_f32 = layer_bytes * m.num_layers;
  std::printf("stats       read %d layers in %.2f s: %.0f MiB/s on disk, %.0f MiB/s as float32\n", m.num_layers, secs,
              mib(disk) / secs, mib(read_f32) / secs);
  std::printf("            RMS q %.4g, k %.4g, v %.4g\n", std::sqrt(sq[0] / n[0]), std::sqrt(sq[1] / n[1]),
              std::sqrt(sq[2] / n[2]));
  std::printf("            peak RSS %.1f MiB = %.2f x one layer (%.1f MiB)\n", mib(static_cast<double>(peak_rss_bytes())),
              static_cast<double>(peak_rss_bytes()) / layer_bytes, mib(layer_bytes));
  return 0;
}

}  // namespace
KVSIM_COMMAND("info", "describe a trace file (shape, positions, queries, size; --stats reads it all)", cmd_info);
}  // namespace kvsim::cli
