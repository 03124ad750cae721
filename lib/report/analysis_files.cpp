#include "report/analysis_files.h"

#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/table_io.h"
#include "report/csv_reader.h"

namespace kvsim::report {

namespace fs = std::filesystem;

std::string key_stats_csv(const std::vector<HeadKeyStats>& stats) {
  std::ostringstream o;
  o << "layer,head,kv_head,eval,n_queries,n_keys,spearman,mass_frac_90,entropy,entropy_norm,span_mass\n";
  for (const auto& s : stats)
    o << s.layer << ',' << s.head << ',' << s.kv_head << ',' << s.eval << ',' << s.n_queries << ',' << s.n_keys << ','
      << format_double(s.spearman) << ',' << format_double(s.mass_frac_90) << ',' << format_double(s.entropy) << ','
      << format_double(s.entropy_norm) << ',' << format_double(s.span_mass) << '\n';
  return o.str();
}

std::string key_recall_csv(const std::vector<HeadKeyStats>& stats, const std::vector<TopN>& top) {
  std::ostringstream o;
  o << "layer,head,eval,top,top_tokens,recall\n";
  for (const auto& s : stats)
    for (std::size_t i = 0; i < top.size() && i < s.recall.size(); ++i)
      o << s.layer << ',' << s.head << ',' << s.eval << ',' << csv_field(top[i].text) << ',' << top[i].tokens << ','
        << format_double(s.recall[i]) << '\n';
  return o.str();
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
