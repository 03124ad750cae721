#include "core/columns.h"

#include <limits>

#include "core/error.h"
#include "core/table_io.h"

namespace kvsim {

const char* column_type_name(ColumnType t) {
  switch (t) {
    case ColumnType::text: return "str";
    case ColumnType::integer: return "int64";
    case ColumnType::real: return "float64";
  }
  return "?";
}

std::string TableSchema::header() const {
  std::string h;
  for (const Column& c : columns) h += (h.empty() ? "" : ",") + std::string(c.name);
  return h;
}

std::size_t TableSchema::index(std::string_view name) const {
  for (std::size_t i = 0; i < columns.size(); ++i)
    if (columns[i].name == name) return i;
  fail(std::string(file), std::string(name), "no such column in the declared schema");
}

std::string markdown_table(const TableSchema& s) {
  std::string out = "| column | type | unit | meaning |\n| --- | --- | --- | --- |\n";
  for (const Column& c : s.columns)
    out += "| `" + std::string(c.name) + "` | " + column_type_name(c.type) + " | " + std::string(c.unit) + " | " +
           std::string(c.meaning) + " |\n";
  return out;
}

CsvRowSink::CsvRowSink(std::ostream& out, const TableSchema& schema, bool header, std::string prefix)
    : out_(out), columns_(schema.columns.size()), prefix_(std::move(prefix)) {
  if (header) out_ << schema.header() << "\n";
}

void CsvRowSink::sep() {
  if (cell_ == 0) out_ << prefix_;
  else out_ << ',';
  ++cell_;
}
void CsvRowSink::text(std::string_view v) {
  sep();
  out_ << csv_field(std::string(v));
}
void CsvRowSink::integer(std::int64_t v) {
  sep();
  out_ << v;
}
void CsvRowSink::real(double v) {
  sep();
  out_ << format_double(v);
}
void CsvRowSink::missing() { sep(); }
void CsvRowSink::end_row() {
  if (cell_ != columns_) throw std::logic_error("CsvRowSink: row with a wrong number of cells");
  out_ << '\n';
  cell_ = 0;
}

ColumnTable::ColumnTable(const TableSchema& s) : schema(&s) {
  for (const Column& c : s.columns) {
    if (c.type == ColumnType::text) columns.emplace_back(std::vector<std::string>{});
    else if (c.type == ColumnType::integer) columns.emplace_back(std::vector<std::int64_t>{});
    else columns.emplace_back(std::vector<double>{});
  }
}

template <typename T>
std::vector<T>& ColumnTableSink::next(ColumnType want) {
  if (cell_ >= t_.columns.size() || t_.schema->columns[cell_].type != want)
    throw std::logic_error("ColumnTableSink: cell does not match the declared column type");
  return std::get<std::vector<T>>(t_.columns[cell_++]);
}
void ColumnTableSink::text(std::string_view v) { next<std::string>(ColumnType::text).emplace_back(v); }
void ColumnTableSink::integer(std::int64_t v) { next<std::int64_t>(ColumnType::integer).push_back(v); }
void ColumnTableSink::real(double v) { next<double>(ColumnType::real).push_back(v); }
void ColumnTableSink::missing() {
  next<double>(ColumnType::real).push_back(std::numeric_limits<double>::quiet_NaN());
}
void ColumnTableSink::end_row() {
  if (cell_ != t_.columns.size()) throw std::logic_error("ColumnTableSink: row with a wrong number of cells");
  cell_ = 0;
  ++t_.rows;
}

}  // namespace kvsim
