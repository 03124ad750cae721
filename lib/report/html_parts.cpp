#include "report/html_parts.h"

#include "report/report_exports.h"
#include "rules/rule_labels.h"

namespace kvsim::report {

std::string p(const std::string& text) { return "<p class=\"note\">" + text + "</p>"; }

std::string h(int level, const std::string& text, const std::string& id) {
  if (ReportExports* e = active_exports()) e->section(id);  // figures below are named after it
  const std::string l = std::to_string(level);
  return "<h" + l + (id.empty() ? "" : " id=\"" + id + "\"") + ">" + html_escape(text) + "</h" + l + ">";
}

std::string plots(const std::vector<std::string>& svgs) {
  std::string o = "<div class=\"plots\">";
  for (const auto& s : svgs) o += s;
  return o + "</div>";
}

std::string dropped_note(const svg::Plot& plot) {
  const std::size_t n = plot.dropped_points();
  return n ? p(std::to_string(n) + " points with a zero, negative or non-finite value are not drawn (log axes).") : "";
}

Labels::Labels(const std::vector<std::string>& rules) : map(short_rule_labels(rules)) {}

const std::string& Labels::operator()(const std::string& spec) const {
  const auto it = map.find(spec);
  return it == map.end() ? spec : it->second;
}

}  // namespace kvsim::report
