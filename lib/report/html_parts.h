#pragma once
// Small building blocks shared by the report's sections: paragraphs, headings, plot rows, short
// rule labels in table cells, and the note about points a log axis cannot draw.
#include <map>
#include <string>
#include <vector>

#include "report/html_table.h"
#include "report/svg_plot.h"

namespace kvsim::report {

std::string p(const std::string& text);  // a note paragraph (text is HTML)
std::string h(int level, const std::string& text, const std::string& id = "");  // escaped heading
std::string plots(const std::vector<std::string>& svgs);
std::string dropped_note(const svg::Plot& plot);

// Rule cells show the short label; the canonical spec is in data-full (and the tooltip).
struct Labels {
  std::map<std::string, std::string> map;
  explicit Labels(const std::vector<std::string>& rules);
  const std::string& operator()(const std::string& spec) const;
  HtmlCell cell(const std::string& spec) const { return HtmlCell::abbrev((*this)(spec), spec); }
};

}  // namespace kvsim::report
