#pragma once
// Output tables declared once: a column is a name, a type, a unit and a one-line meaning. The
// writers (CSV, the in-memory columnar table the Python API turns into a DataFrame), the readers
// and docs/outputs.md (kvsim columns --markdown) all take the columns from the declaration.
#include <cstdint>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace kvsim {

enum class ColumnType { text, integer, real };
const char* column_type_name(ColumnType t);  // "str", "int64", "float64"

struct Column {
  std::string_view name;
  ColumnType type;
  std::string_view unit;     // "" when dimensionless or a label
  std::string_view meaning;  // one line
};

// One declared output table: the file it is written to and its columns in file order.
struct TableSchema {
  std::string_view file;
  std::string_view content;  // one line: what one row is
  std::vector<Column> columns;
  std::string header() const;  // "a,b,c" (no newline)
  // Index of `name`; throws kvsim::Error naming the table when it is not declared.
  std::size_t index(std::string_view name) const;
};

// The docs table of a schema: | column | type | unit | meaning |.
std::string markdown_table(const TableSchema& schema);

// Rows are written cell by cell in the schema's order; end_row() checks the count.
class RowSink {
 public:
  virtual ~RowSink() = default;
  virtual void text(std::string_view v) = 0;
  virtual void integer(std::int64_t v) = 0;
  virtual void real(double v) = 0;
  virtual void missing() = 0;  // a real column with no value: an empty CSV field, NaN in memory
  virtual void end_row() = 0;
};

// CSV text (RFC 4180 fields, shortest round-trip doubles) to a stream; the header on construction.
class CsvRowSink : public RowSink {
 public:
  CsvRowSink(std::ostream& out, const TableSchema& schema, bool header = true, std::string prefix = "");
  void text(std::string_view v) override;
  void integer(std::int64_t v) override;
  void real(double v) override;
  void missing() override;
  void end_row() override;

 private:
  void sep();
  std::ostream& out_;
  std::size_t columns_, cell_ = 0;
  std::string prefix_;  // written before every row (kvsim sweep's trace column)
};

// The table in memory, column by column (the Python API's DataFrame without a CSV in between).
struct ColumnTable {
  using Data = std::variant<std::vector<std::string>, std::vector<std::int64_t>, std::vector<double>>;
  const TableSchema* schema = nullptr;
  std::vector<Data> columns;
  std::size_t rows = 0;
  explicit ColumnTable(const TableSchema& s);
  ColumnTable() = default;
};

class ColumnTableSink : public RowSink {
 public:
  explicit ColumnTableSink(ColumnTable& table) : t_(table) {}
  void text(std::string_view v) override;
  void integer(std::int64_t v) override;
  void real(double v) override;
  void missing() override;
  void end_row() override;

 private:
  template <typename T>
  std::vector<T>& next(ColumnType want);
  ColumnTable& t_;
  std::size_t cell_ = 0;
};

// Discards every row (a run that wants only the summary).
class NullRowSink : public RowSink {
 public:
  void text(std::string_view) override {}
  void integer(std::int64_t) override {}
  void real(double) override {}
  void missing() override {}
  void end_row() override {}
};

// Every cell written to both sinks (files and the in-memory table in one run).
class TeeRowSink : public RowSink {
 public:
  TeeRowSink(RowSink& a, RowSink& b) : a_(a), b_(b) {}
  void text(std::string_view v) override { a_.text(v), b_.text(v); }
  void integer(std::int64_t v) override { a_.integer(v), b_.integer(v); }
  void real(double v) override { a_.real(v), b_.real(v); }
  void missing() override { a_.missing(), b_.missing(); }
  void end_row() override { a_.end_row(), b_.end_row(); }

 private:
  RowSink &a_, &b_;
};

}  // namespace kvsim
