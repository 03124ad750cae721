#pragma once
// Tiny writers for the output files: RFC 4180 CSV fields (JSON: core/json.h). Output files are
// written to a partial file of their own (core/output_path.h) and renamed by commit(), so a crash
// never leaves a file that looks complete.
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

// Streams to a unique partial file; finish() flushes and closes it (throwing if any write
// failed), commit() finishes and renames it to path. Destruction without commit() removes the
// partial file. Finishing every file of a run before committing any keeps a run's outputs
// all-or-nothing.
class AtomicOutFile {
 public:
  explicit AtomicOutFile(std::string path);
  ~AtomicOutFile();
  std::ofstream& stream() { return out_; }
  void finish();
  void commit();

 private:
  enum class State { open, finished, committed };
  std::string path_, tmp_;
  std::ofstream out_;
  State state_ = State::open;
};

}  // namespace kvsim
