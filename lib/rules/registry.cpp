// Rule registry and typed parameter access (registry.h).
#include "rules/registry.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cctype>
#include <map>
#include <mutex>

#include "core/error.h"
#include "core/table_io.h"

namespace kvsim {
namespace {

struct Entry {
  RuleInfo info;
  RuleBuilder build;
  bool runtime = false;  // registered after start-up (the Python module's rules)
};

// Function-local static: registration runs during static initialisation of other files.
std::map<std::string, Entry>& registry() {
  static std::map<std::string, Entry> r;
  return r;
}

// Runtime registration may run while another thread builds rules.
std::recursive_mutex& registry_mutex() {
  static std::recursive_mutex m;
  return m;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

RuleRegistrar::RuleRegistrar(RuleInfo info, RuleBuilder build) {
  auto& r = registry();
  if (r.count(info.name)) {
    // Two rules with one name is a programming error caught at start-up by every test run.
    std::fprintf(stderr, "kvsim: rule '%s' registered twice\n", info.name.c_str());
    std::abort();
  }
  std::string name = info.name;
  r.emplace(name, Entry{std::move(info), std::move(build)});
}

void register_runtime_rule(RuleInfo info, RuleBuilder build) {
  std::lock_guard lock(registry_mutex());
  auto& r = registry();
  auto it = r.find(info.name);
  if (it != r.end() && !it->second.runtime)
    throw Error("rule '" + info.name + "': the name of a built-in rule (kvsim rules lists them); choose another");
  bool ok = !info.name.empty() && (std::isalpha(static_cast<unsigned char>(info.name[0])) || info.name[0] == '_');
  for (char c : info.name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
  if (!ok) throw Error("rule name '" + info.name + "': letters, digits and '_' only, not starting with a digit");
  std::string name = info.name;
  r[name] = Entry{std::move(info), std::move(build), true};
}

bool unregister_runtime_rule(const std::string& name) {
  std::lock_guard lock(registry_mutex());
  auto& r = registry();
  auto it = r.find(name);
  if (it == r.end() || !it->second.runtime) return false;
  r.erase(it);
  return true;
}

std::vector<std::string> registered_rule_names() {
  std::lock_guard lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& [n, e] : registry()) names.push_back(n);
  return names;
}

std::vector<RuleInfo> rule_catalogue() {
  std::lock_guard lock(registry_mutex());
  std::vector<RuleInfo> out;
  for (const auto& [n, e] : registry()) out.push_back(e.info);
  return out;
}

std::unique_ptr<Rule> build_rule(const Spec& spec) {
  RuleBuilder build;
  {
    std::lock_guard lock(registry_mutex());
    auto& r = registry();
    auto it = r.find(spec.name);
    if (it == r.end()) throw Error("unknown rule '" + spec.name + "' (known: " + join(registered_rule_names()) + ")");
    build = it->second.build;  // a copy: a runtime rule may be replaced while this one builds
  }
  SpecReader reader(spec);
  auto rule = build(reader);
  reader.finish();
  return rule;
}

SpecReader::SpecReader(const Spec& spec) : spec_(spec) {}

void SpecReader::error(const std::string& what) const { throw Error(spec_.name + ": " + what); }

const std::string* SpecReader::find(const std::string& name) {
  if (std::find(used_params_.begin(), used_params_.end(), name) == used_params_.end()) used_params_.push_back(name);
  for (const auto& [k, v] : spec_.params)
    if (k == name) return &v;
  return nullptr;
}

int SpecReader::get_pool_kernel(int def) {
  const int k = static_cast<int>(get_int("kernel", def, 1, 1001));
  if (k % 2 == 0) error("parameter 'kernel': must be odd, got " + std::to_string(k));
  return k;
}

long long SpecReader::get_int(const std::string& name, long long def, long long min, long long max) {
  long long value = def;
  if (const std::string* text = find(name)) {
    errno = 0;
    char* end = nullptr;
    value = std::strtoll(text->c_str(), &end, 10);
    if (end == text->c_str() || *end != '\0' || errno == ERANGE)
      error("parameter '" + name + "': expected an integer, got '" + *text + "'");
  }
  if (value < min || value > max)
    error("parameter '" + name + "': " + std::to_string(value) + " is out of range [" + std::to_string(min) + ", " +
          std::to_string(max) + "]");
  canon_params_.emplace_back(name, std::to_string(value));
  return value;
}

double SpecReader::get_double(const std::string& name, double def, double min, double max) {
  double value = def;
  if (const std::string* text = find(name)) {
    errno = 0;
    char* end = nullptr;
    value = std::strtod(text->c_str(), &end);
    if (end == text->c_str() || *end != '\0' || errno == ERANGE || !std::isfinite(value))
      error("parameter '" + name + "': expected a number, got '" + *text + "'");
  }
  if (value < min || value > max)
    error("parameter '" + name + "': " + format_double(value) + " is out of range [" + format_double(min) + ", " +
          format_double(max) + "]");
  canon_params_.emplace_back(name, format_double(value));
  return value;
}

bool SpecReader::get_bool(const std::string& name, bool def) {
  bool value = def;
  if (const std::string* text = find(name)) {
    const std::string& t = *text;
    if (t == "true" || t == "1" || t == "yes" || t == "on") value = true;
    else if (t == "false" || t == "0" || t == "no" || t == "off") value = false;
    else error("parameter '" + name + "': expected true or false, got '" + t + "'");
  }
  canon_params_.emplace_back(name, value ? "true" : "false");
  return value;
}

std::string SpecReader::get_string(const std::string& name, const std::string& def, bool required) {
  std::string value = def;
  if (const std::string* text = find(name)) value = *text;
  else if (required) error("parameter '" + name + "' is required, e.g. " + spec_.name + "(" + name + "=...)");
  canon_params_.emplace_back(name, value);
  return value;
}

std::string SpecReader::get_choice(const std::string& name, const std::string& def,
                                   const std::vector<std::string>& choices) {
  std::string value = def;
  if (const std::string* text = find(name)) value = *text;
  if (std::find(choices.begin(), choices.end(), value) == choices.end())
    error("parameter '" + name + "': '" + value + "' is not one of " + join(choices));
  canon_params_.emplace_back(name, value);
  return value;
}

std::unique_ptr<Rule> SpecReader::get_rule(std::size_t i) {
  if (i >= spec_.args.size()) error("needs a base rule as argument " + std::to_string(i + 1) + ", e.g. " + spec_.name + "(snapkv)");
  used_args_ = std::max(used_args_, i + 1);
  auto rule = build_rule(spec_.args[i]);
  if (canon_args_.size() <= i) canon_args_.resize(i + 1);
  canon_args_[i] = rule->spec();
  return rule;
}

std::unique_ptr<Rule> SpecReader::get_rule_or(std::size_t i, const std::string& default_spec) {
  if (i < spec_.args.size()) return get_rule(i);
  auto rule = build_rule(parse_spec(default_spec));
  if (canon_args_.size() <= i) canon_args_.resize(i + 1);
  canon_args_[i] = rule->spec();
  return rule;
}

void SpecReader::finish() {
  for (const auto& [k, v] : spec_.params)
    if (std::find(used_params_.begin(), used_params_.end(), k) == used_params_.end())
      error("unknown parameter '" + k + "'" +
            (used_params_.empty() ? std::string(" (it takes no parameters)") : " (known: " + join(used_params_) + ")"));
  if (spec_.args.size() > used_args_) {
    if (used_args_ == 0) error("takes no base rule, but got '" + print_spec(spec_.args[0]) + "'");
    error("takes " + std::to_string(used_args_) + " base rule(s), but got " + std::to_string(spec_.args.size()));
  }
}

std::string SpecReader::canonical() const {
  if (canon_args_.empty() && canon_params_.empty()) return spec_.name;
  std::string out = spec_.name + "(";
  bool first = true;
  for (const auto& a : canon_args_) {
    out += (first ? "" : ",") + a;
    first = false;
  }
  for (const auto& [k, v] : canon_params_) {
    out += (first ? "" : ",") + k + "=" + v;
    first = false;
  }
  return out + ")";
}

}  // namespace kvsim
