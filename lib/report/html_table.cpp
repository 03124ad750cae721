#include "report/html_table.h"

#include <cmath>
#include <cstdio>

#include "core/table_io.h"
#include "report/report_exports.h"

namespace kvsim::report {

std::string display_number(double v) {
  if (!std::isfinite(v)) return format_double(v);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string HtmlTable::render() const {
  if (ReportExports* e = active_exports()) e->table({id_, caption_, headers_, rows_});
  std::string o = "<div class=\"tablewrap\"><table class=\"data\" id=\"" + html_escape(id_) + "\">";
  if (!caption_.empty()) o += "<caption>" + html_escape(caption_) + "</caption>";
  o += "<thead><tr>";
  for (const auto& h : headers_) o += "<th>" + html_escape(h) + "</th>";
  o += "</tr></thead><tbody>";
  for (const auto& row : rows_) {
    o += "<tr>";
    for (const auto& c : row) {
      if (c.numeric) {
        const std::string shown = c.text.empty() ? display_number(c.value) : c.text;
        o += "<td class=\"num\" data-v=\"" + format_double(c.value) + "\">" + html_escape(shown) + "</td>";
      } else if (!c.full.empty()) {
        o += "<td title=\"" + html_escape(c.full) + "\" data-full=\"" + html_escape(c.full) + "\">" + html_escape(c.text) + "</td>";
      } else {
        o += "<td>" + html_escape(c.text) + "</td>";
      }
    }
    o += "</tr>";
  }
  return o + "</tbody></table></div>";
}

}  // namespace kvsim::report
