#include "testutil/testutil.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace kvsim::test {

namespace fs = std::filesystem;

SynthOptions small_shape(int num_layers, i64 seq_len) {
  SynthOptions o;
  o.num_layers = num_layers;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.head_dim = 16;
  o.hidden_size = 64;
  o.seq_len = seq_len;
  o.question_len = 8;
  o.gen_len = 8;
  o.window = 32;
  return o;
}

std::vector<std::string> partial_files(const std::string& target) {
  std::vector<std::string> found;
  auto is_partial = [](const fs::path& p) { return p.extension() == ".partial"; };
  std::error_code ec;
  if (fs::is_directory(target, ec)) {
    for (const auto& e : fs::recursive_directory_iterator(target, ec))
      if (is_partial(e.path())) found.push_back(e.path().string());
    return found;
  }
  const fs::path t(target);
  const std::string prefix = t.filename().string() + ".";
  const fs::path folder = t.has_parent_path() ? t.parent_path() : fs::path(".");
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && is_partial(e.path())) found.push_back(e.path().string());
  }
  return found;
}

TempDir::TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  path = fs::path(KVSIM_BINARY_DIR) / "test-tmp" /
         (tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(path);
  fs::create_directories(path);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path, ec);
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

RunResult run_command(const std::string& cmdline) {
  TempDir tmp("run");
  const std::string out = tmp.file("stdout"), err = tmp.file("stderr");
  const std::string full = cmdline + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(full.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

std::string test_nu_cache_dir() {
  const char* env = std::getenv("KVSIM_CACHE_DIR");
  return env && *env ? env : (fs::path(KVSIM_BINARY_DIR) / "test-tmp" / "nu-cache").string();
}

RunResult run_kvsim(const std::string& args) {
  return run_command("KVSIM_CACHE_DIR='" + test_nu_cache_dir() + "' " + std::string(KVSIM_CLI) + " " + args);
}

std::string source_dir() { return KVSIM_SOURCE_DIR; }
std::string shared_dir() { return KVSIM_SHARED_DIR; }
std::string stories260k_dir() { return shared_dir() + "/models/stories260K"; }

}  // namespace kvsim::test
