#pragma once
// Helpers shared by the doctest suites: temporary folders, running the CLI, shared data paths.
#include <filesystem>
#include <string>
#include <vector>

#include "trace/synthetic.h"

namespace kvsim::test {

// A fresh empty folder under the build tree, removed at destruction.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag);
  ~TempDir();
  std::string file(const std::string& name) const { return (path / name).string(); }
};

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};
// The whole content of a file ("" when it cannot be read).
std::string slurp(const std::string& path);
// Runs a shell command line, capturing stdout and stderr.
RunResult run_command(const std::string& cmdline);
// Runs the kvsim CLI with the given argument string, with KVSIM_CACHE_DIR set to
// test_nu_cache_dir() so that tests never write the user's nu cache.
RunResult run_kvsim(const std::string& args);
// $KVSIM_CACHE_DIR when set (ctest sets it under the build tree), else <build>/test-tmp/nu-cache.
std::string test_nu_cache_dir();

// What an interrupted or failed write leaves behind: partial files ("<name>.<pid>-<random>.partial")
// of target in its folder, or, when target is a folder, every partial file under it.
std::vector<std::string> partial_files(const std::string& target);

// The small synthetic shape the CLI and writer tests share: 4 heads, 2 KV heads, head_dim 16,
// hidden 64, question 8 and generated 8 positions, a 32-query window.
SynthOptions small_shape(int num_layers, i64 seq_len);

std::string source_dir();  // repository root
std::string shared_dir();  // ../shared beside the repository
std::string stories260k_dir();  // shared/models/stories260K

}  // namespace kvsim::test
