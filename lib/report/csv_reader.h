#pragma once
// RFC 4180 CSV reading for the report: a header row plus string cells, with typed column access.
// Every problem names the file, the line and the column: "<path>: line 12, column pert_l1: ...".
#include <string>
#include <string_view>
#include <vector>

#include "core/columns.h"

namespace kvsim::report {

class CsvTable {
 public:
  // Reads and parses the whole file. Throws kvsim::Error on a missing file, ragged rows or an
  // unterminated quote.
  static CsvTable read(const std::string& path);
  static CsvTable parse(const std::string& text, const std::string& where);

  const std::string& where() const { return where_; }
  const std::vector<std::string>& header() const { return header_; }
  std::size_t rows() const { return cells_.size(); }
  bool has_column(const std::string& name) const;
  // Index of a column; throws "<path>: <name>: missing column" when absent.
  std::size_t column(const std::string& name) const;

  const std::string& cell(std::size_t row, std::size_t col) const { return cells_[row][col]; }
  // Parses a cell as a number ("nan", "inf", "-inf" accepted); throws naming line and column.
  double number(std::size_t row, std::size_t col) const;
  long long integer(std::size_t row, std::size_t col) const;

 private:
  std::string where_;
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> cells_;
  std::vector<long> line_of_row_;  // 1-based source line of each data row, for messages
};

// The index of a column a table declares (`schema`, kvsim columns): a name the declaration lacks
// throws here, not as a silently missing column; then CsvTable::column.
std::size_t declared_column(const CsvTable& t, const TableSchema& schema, std::string_view name);

}  // namespace kvsim::report
