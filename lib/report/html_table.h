#pragma once
// HTML tables for the report. Numeric cells carry their full-precision value in data-v (the
// shortest round-trip text) next to the rounded display, so tests and users can check every
// number against the CSV files it came from.
#include <string>
#include <vector>

#include "report/markup_escape.h"

namespace kvsim::report {

std::string display_number(double v);  // 6 significant digits; "nan" / "inf" spelled out

struct HtmlCell {
  std::string text;
  bool numeric = false;
  double value = 0;
  std::string full;  // text cells: the full text behind an abbreviation (data-full and tooltip)
  static HtmlCell str(std::string s) { return {std::move(s), false, 0, ""}; }
  static HtmlCell abbrev(std::string shown, std::string full) { return {std::move(shown), false, 0, std::move(full)}; }
  static HtmlCell num(double v) { return {"", true, v, ""}; }
  static HtmlCell integer(long long v) { return {std::to_string(v), true, static_cast<double>(v), ""}; }
};

class HtmlTable {
 public:
  // id: a stable identifier (tests find tables by it); caption: one line saying what it shows.
  HtmlTable(std::string id, std::string caption, std::vector<std::string> headers)
      : id_(std::move(id)), caption_(std::move(caption)), headers_(std::move(headers)) {}
  void add_row(std::vector<HtmlCell> cells) { rows_.push_back(std::move(cells)); }
  bool empty() const { return rows_.empty(); }
  std::string render() const;

 private:
  std::string id_, caption_;
  std::vector<std::string> headers_;
  std::vector<std::vector<HtmlCell>> rows_;
};

}  // namespace kvsim::report
