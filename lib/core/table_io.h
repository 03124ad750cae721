#pragma once
// Tiny writers for the output files: RFC 4180 CSV fields (JSON: core/json.h). Output files are
// written to "<name>.partial" and renamed by commit_file(), so a crash never leaves a file that
// looks complete.
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace kvsim {

std::string csv_field(const std::string& s);  // quotes when the field has , " or newline
std::string format_double(double v);          // shortest round-trip form; "nan"/"inf" spelled out

// The whole content of a file (binary). Throws kvsim::Error "<path>: cannot open file".
std::string read_whole_file(const std::string& path);

// Writes `content` to path atomically (temp file + rename). Throws kvsim::Error on failure.
void write_file_atomic(const std::string& path, const std::string& content);

// Streams to "<path>.partial"; commit() renames it to path. Destruction without commit()
// removes the partial file.
class AtomicOutFile {
 public:
  explicit AtomicOutFile(std::string path);
  ~AtomicOutFile();
  std::ofstream& stream() { return out_; }
  void commit();

 private:
  std::string path_, tmp_;
  std::ofstream out_;
  bool committed_ = false;
};

}  // namespace kvsim
