#pragma once
// kvsim report --tables DIR / --figures DIR: every table and figure of the page also as its own
// file, for papers. While an ExportScope is active (render_html_report under the CLI's options),
// HtmlTable::render, svg::Plot::render, svg::HeatMap::render and h() report to it; the files are
// named after the section (its heading id) they appear in.
#include <map>
#include <string>
#include <vector>

#include "report/html_table.h"

namespace kvsim::report {

struct ExportedTable {
  std::string name;  // the table's id (stable: tests find tables by it)
  std::string caption;
  std::vector<std::string> headers;
  std::vector<std::vector<HtmlCell>> rows;
};

struct ExportedFigure {
  std::string name;  // <section id>-<n>[-<title words>]
  std::string svg;   // a standalone SVG document
};

class ReportExports {
 public:
  void section(const std::string& id);
  void table(ExportedTable t);
  void figure(const std::string& svg, const std::string& title);
  std::vector<ExportedTable> tables;
  std::vector<ExportedFigure> figures;

 private:
  std::string section_ = "report";
  std::map<std::string, int> count_;
};

ReportExports* active_exports();  // null unless an ExportScope is alive on this thread

class ExportScope {
 public:
  explicit ExportScope(ReportExports* e);
  ~ExportScope();
  ExportScope(const ExportScope&) = delete;
  ExportScope& operator=(const ExportScope&) = delete;

 private:
  ReportExports* previous_;
};

// A table as a paper wants it: numbers with `digits` significant digits (integers whole).
std::string table_markdown(const ExportedTable& t, int digits);
std::string table_latex(const ExportedTable& t, int digits);  // a booktabs tabular in a table float
std::string table_csv(const ExportedTable& t);                 // every number in full precision

}  // namespace kvsim::report
