#include "report/analysis_files.h"

#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/table_io.h"
#include "report/csv_reader.h"

namespace kvsim::report {

namespace fs = std::filesystem;

const TableSchema& key_stats_schema() {
  static const TableSchema s{
      "key_stats.csv", "one (layer, query head, eval set): KeyDiff's premise statistics",
      {{"layer", ColumnType::integer, "", "layer index"},
       {"head", ColumnType::integer, "", "query head"},
       {"kv_head", ColumnType::integer, "", "its KV head"},
       {"eval", ColumnType::text, "", "queries (positions >= n_c) or window (the observation window)"},
       {"n_queries", ColumnType::integer, "", "queries averaged"},
       {"n_keys", ColumnType::integer, "tokens", "keys of the compressible span [0, n_c)"},
       {"spearman", ColumnType::real, "",
        "Spearman correlation (average ranks) of KeyDiff's distinctiveness −cos(k_j, μ) and the mean attention key j gets"},
       {"mass_frac_90", ColumnType::real, "", "fewest span keys holding 90% of the span mass, over n_c (mean over queries)"},
       {"entropy", ColumnType::real, "nats", "entropy of the span attention renormalised (mean over queries)"},
       {"entropy_norm", ColumnType::real, "", "entropy / log(n_c)"},
       {"span_mass", ColumnType::real, "", "attention mass on [0, n_c) (mean over queries)"}}};
  return s;
}

const TableSchema& key_recall_schema() {
  static const TableSchema s{
      "key_recall.csv", "one (layer, query head, eval set, top-N): recall of the attention top-N by KeyDiff's",
      {{"layer", ColumnType::integer, "", "layer index"},
       {"head", ColumnType::integer, "", "query head"},
       {"eval", ColumnType::text, "", "queries or window"},
       {"top", ColumnType::text, "", "N as written (--top): a fraction of n_c or a token count"},
       {"top_tokens", ColumnType::integer, "tokens", "N in tokens"},
       {"recall", ColumnType::real, "", "|top-N attention ∩ top-N KeyDiff| / N"}}};
  return s;
}

void write_key_stats(RowSink& out, const std::vector<HeadKeyStats>& stats) {
  for (const auto& s : stats) {
    out.integer(s.layer);
    out.integer(s.head);
    out.integer(s.kv_head);
    out.text(s.eval);
    out.integer(s.n_queries);
    out.integer(s.n_keys);
    out.real(s.spearman);
    out.real(s.mass_frac_90);
    out.real(s.entropy);
    out.real(s.entropy_norm);
    out.real(s.span_mass);
    out.end_row();
  }
}

void write_key_recall(RowSink& out, const std::vector<HeadKeyStats>& stats, const std::vector<TopN>& top) {
  for (const auto& s : stats)
    for (std::size_t i = 0; i < top.size() && i < s.recall.size(); ++i) {
      out.integer(s.layer);
      out.integer(s.head);
      out.text(s.eval);
      out.text(top[i].text);
      out.integer(top[i].tokens);
      out.real(s.recall[i]);
      out.end_row();
    }
}

bool is_analyze_output(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / "key_stats.csv"); }

AnalyzeOutput load_analyze_output(const std::string& dir) {
  AnalyzeOutput out;
  out.dir = dir;
  const std::string stats_path = (fs::path(dir) / "key_stats.csv").string();
  const std::string recall_path = (fs::path(dir) / "key_recall.csv").string();
  const std::string summary_path = (fs::path(dir) / "summary.json").string();
  if (!fs::exists(stats_path)) fail(stats_path, "", "missing (is this a kvsim analyze --out folder?)");
  if (fs::exists(summary_path)) out.summary = JsonValue::read_file(summary_path);
  const CsvTable t = CsvTable::read(stats_path);
  const auto c_layer = t.column("layer"), c_head = t.column("head"), c_kv = t.column("kv_head"), c_eval = t.column("eval"),
             c_nq = t.column("n_queries"), c_nk = t.column("n_keys"), c_sp = t.column("spearman"),
             c_m90 = t.column("mass_frac_90"), c_ent = t.column("entropy"), c_entn = t.column("entropy_norm"),
             c_span = t.column("span_mass");
  std::set<int> layers;
  for (std::size_t i = 0; i < t.rows(); ++i) {
    HeadKeyStats s;
    s.layer = static_cast<int>(t.integer(i, c_layer));
    s.head = static_cast<int>(t.integer(i, c_head));
    s.kv_head = static_cast<int>(t.integer(i, c_kv));
    s.eval = t.cell(i, c_eval);
    s.n_queries = t.integer(i, c_nq);
    s.n_keys = t.integer(i, c_nk);
    s.spearman = t.number(i, c_sp);
    s.mass_frac_90 = t.number(i, c_m90);
    s.entropy = t.number(i, c_ent);
    s.entropy_norm = t.number(i, c_entn);
    s.span_mass = t.number(i, c_span);
    layers.insert(s.layer);
    out.stats.push_back(std::move(s));
  }
  out.layers.assign(layers.begin(), layers.end());
  if (fs::exists(recall_path)) {
    const CsvTable r = CsvTable::read(recall_path);
    const auto c_l = r.column("layer"), c_h = r.column("head"), c_e = r.column("eval"), c_t = r.column("top"),
               c_tt = r.column("top_tokens"), c_r = r.column("recall");
    for (std::size_t i = 0; i < r.rows(); ++i)
      out.recall.push_back({static_cast<int>(r.integer(i, c_l)), static_cast<int>(r.integer(i, c_h)), r.cell(i, c_e),
                            r.cell(i, c_t), r.integer(i, c_tt), r.number(i, c_r)});
  }
  return out;
}

}  // namespace kvsim::report
