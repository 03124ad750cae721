#include "report/csv_reader.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/table_io.h"

namespace kvsim::report {

CsvTable CsvTable::read(const std::string& path) {
  return parse(read_whole_file(path), path);
}

CsvTable CsvTable::parse(const std::string& text, const std::string& where) {
  CsvTable t;
  t.where_ = where;
  std::vector<std::string> record;
  std::string field;
  bool in_quotes = false, field_started = false;
  long line = 1, record_line = 1;
  auto end_record = [&]() {
    record.push_back(std::move(field));
    field.clear();
    field_started = false;
    if (record.size() == 1 && record[0].empty()) {  // blank line
      record.clear();
      return;
    }
    if (t.header_.empty()) {
      t.header_ = std::move(record);
    } else {
      if (record.size() != t.header_.size())
        fail(where, "line " + std::to_string(record_line),
             std::to_string(record.size()) + " fields, the header has " + std::to_string(t.header_.size()));
      t.cells_.push_back(std::move(record));
      t.line_of_row_.push_back(record_line);
    }
    record.clear();
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && !field_started) {
      in_quotes = field_started = true;
    } else if (c == ',') {
      record.push_back(std::move(field));
      field.clear();
      field_started = false;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_record();
      ++line;
      record_line = line;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (in_quotes) fail(where, "line " + std::to_string(record_line), "unterminated quoted field");
  if (field_started || !record.empty()) end_record();
  if (t.header_.empty()) fail(where, "", "empty file (no header row)");
  return t;
}

bool CsvTable::has_column(const std::string& name) const {
  for (const auto& h : header_)
    if (h == name) return true;
  return false;
}

std::size_t CsvTable::column(const std::string& name) const {
  for (std::size_t i = 0; i < header_.size(); ++i)
    if (header_[i] == name) return i;
  fail(where_, name, "missing column");
}

double CsvTable::number(std::size_t row, std::size_t col) const {
  const std::string& s = cells_[row][col];
  if (s == "nan" || s == "NaN") return std::nan("");
  if (s == "inf") return INFINITY;
  if (s == "-inf") return -INFINITY;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size())
    fail(where_, "line " + std::to_string(line_of_row_[row]) + ", column " + header_[col],
         "'" + s + "' is not a number");
  return v;
}

long long CsvTable::integer(std::size_t row, std::size_t col) const {
  const std::string& s = cells_[row][col];
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size())
    fail(where_, "line " + std::to_string(line_of_row_[row]) + ", column " + header_[col],
         "'" + s + "' is not an integer");
  return v;
}

std::size_t declared_column(const CsvTable& t, const TableSchema& schema, std::string_view name) {
  schema.index(name);
  return t.column(std::string(name));
}

}  // namespace kvsim::report
