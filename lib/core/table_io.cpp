#include "core/table_io.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/output_path.h"

namespace kvsim {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string format_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", "cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& content) {
  AtomicOutFile f(path);
  f.stream() << content;
  f.commit();
}

AtomicOutFile::AtomicOutFile(std::string path) : path_(std::move(path)) {
  check_output_target(path_);
  tmp_ = create_partial_file(path_);
  out_.open(tmp_, std::ios::binary | std::ios::trunc);
  if (!out_) {
    discard_partial_file(tmp_);
    fail(path_, "", "cannot open for writing");
  }
}

AtomicOutFile::~AtomicOutFile() {
  if (state_ != State::committed) {
    out_.close();
    discard_partial_file(tmp_);
  }
}

void AtomicOutFile::finish() {
  if (state_ != State::open) return;
  out_.flush();
  if (!out_) fail(path_, "", "write failed (disk full?)");
  out_.close();
  if (out_.fail()) fail(path_, "", "write failed at close (disk full?)");
  state_ = State::finished;
}

void AtomicOutFile::commit() {
  finish();
  commit_partial_file(tmp_, path_);
  state_ = State::committed;
}

}  // namespace kvsim
