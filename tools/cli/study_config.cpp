#include "study_config.h"

#include <toml.hpp>

#include "core/error.h"
#include "core/json.h"
#include "core/table_io.h"

namespace kvsim::cli {

namespace {

// One scalar as the command line would spell it (doubles in their shortest round-trip form, so
// budgets = [0.1] is the budget "0.1").
std::string scalar_text(const toml::value& v, const std::string& where) {
  if (v.is_string()) return v.as_string().str;
  if (v.is_integer()) return std::to_string(v.as_integer());
  if (v.is_floating()) return format_double(v.as_floating());
  fail(where, "", "expected a string, a number or an array of them");
}

Json scalar_json(const toml::value& v) {
  if (v.is_string()) return v.as_string().str;
  if (v.is_integer()) return static_cast<std::int64_t>(v.as_integer());
  if (v.is_floating()) return v.as_floating();
  return v.as_boolean();
}

}  // namespace

StudyConfig read_study_config(const std::string& path, const boost::program_options::options_description& opts) {
  toml::value doc;
  try {
    doc = toml::parse(path);
  } catch (const std::exception& e) {
    // toml11 quotes the offending line; its first line names the problem.
    std::string what = e.what();
    fail(path, "", "not a valid TOML study file: " + what.substr(0, what.find('\n')));
  }
  StudyConfig out;
  Json settings = Json::object();
  for (const auto& [raw_key, value] : doc.as_table()) {
    std::string key = raw_key;
    for (char& c : key)
      if (c == '_') c = '-';
    const std::string where = path + ": " + raw_key;
    if (key == "config" || !opts.find_nothrow(key, false)) fail(where, "", "not an option of kvsim sweep");
    if (value.is_boolean()) {
      settings[raw_key] = value.as_boolean();
      if (value.as_boolean()) out.args.push_back("--" + key);
      continue;
    }
    if (value.is_array()) {
      std::string joined;
      Json items = Json::array();
      for (const auto& item : value.as_array()) {
        if (item.is_array() || item.is_table() || item.is_boolean())
          fail(where, "", "expected an array of strings or numbers");
        joined += (joined.empty() ? "" : key == "rules" ? ";" : ",") + scalar_text(item, where);
        items.push_back(scalar_json(item));
      }
      settings[raw_key] = items;
      out.args.insert(out.args.end(), {"--" + key, joined});
      continue;
    }
    if (value.is_table()) fail(where, "", "tables are not study settings (write key = value at the top level)");
    settings[raw_key] = scalar_json(value);
    out.args.insert(out.args.end(), {"--" + key, scalar_text(value, where)});
  }
  out.json = json_text(Json{{"path", path}, {"settings", settings}});
  return out;
}

}  // namespace kvsim::cli
