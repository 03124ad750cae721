#include "report/prefill_outputs.h"

#include <filesystem>

#include "core/error.h"

namespace kvsim::report {

namespace fs = std::filesystem;

const CsvTable* PrefillOutput::table(const std::string& name) const {
  for (const auto& [n, t] : tables)
    if (n == name) return &t;
  return nullptr;
}

PrefillOutput load_prefill_output(const std::string& dir) {
  if (!fs::is_directory(dir)) fail(dir, "", "not a folder (expected a kvsim prefill --out folder)");
  PrefillOutput out;
  out.dir = dir;
  const std::string summary = (fs::path(dir) / "summary.json").string();
  if (!fs::exists(summary)) fail(summary, "", "missing (is this a kvsim prefill --out folder?)");
  out.summary = JsonValue::read_file(summary);
  for (const char* name : {"metrics.csv", "locality.csv"}) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p)) out.tables.emplace_back(name, CsvTable::read(p.string()));
  }
  const fs::path bench = fs::path(dir) / "bench.json";
  if (fs::exists(bench)) out.bench = JsonValue::read_file(bench.string());
  if (out.tables.empty()) fail(dir, "", "neither metrics.csv nor locality.csv found");
  return out;
}

}  // namespace kvsim::report
