#include "report/figure_files.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/output_path.h"
#include "core/table_io.h"

extern char** environ;

namespace kvsim::report {

std::string svg_converter() {
  const char* path = std::getenv("PATH");
  const std::string dirs = path ? path : "/usr/bin:/bin";
  for (std::size_t b = 0, e; b <= dirs.size(); b = e + 1) {
    e = dirs.find(':', b);
    if (e == std::string::npos) e = dirs.size();
    const std::string candidate = (e > b ? dirs.substr(b, e - b) : std::string(".")) + "/rsvg-convert";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

void convert_svg(const std::string& converter, const std::string& svg_path, const std::string& out_path,
                 const std::string& format) {
  if (format != "png" && format != "pdf") fail(out_path, "", "unknown figure format '" + format + "'");
  check_output_target(out_path);
  const std::string partial = create_partial_file(out_path), complaints = partial + ".stderr";
  // 300 dpi for PNG: kvsim's SVG sizes are CSS pixels (96 per inch).
  std::vector<std::string> args = {converter, "--format", format, "--background-color", "white"};
  if (format == "png") args.insert(args.end(), {"--zoom", "3.125"});
  args.insert(args.end(), {"--output", partial, svg_path});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, complaints.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, converter.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  if (spawned == 0)
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  std::string said;
  std::error_code ec;
  if (std::filesystem::exists(complaints, ec)) {
    try {
      said = read_whole_file(complaints);
    } catch (const Error&) {
    }
    std::filesystem::remove(complaints, ec);
  }
  if (const auto nl = said.find('\n'); nl != std::string::npos) said.resize(nl);
  const bool ok = spawned == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                  std::filesystem::file_size(partial, ec) > 0 && !ec;
  if (!ok) {
    discard_partial_file(partial);
    const std::string why = spawned != 0 ? "could not start " + converter
                            : WIFSIGNALED(status) ? "rsvg-convert was killed by signal " + std::to_string(WTERMSIG(status))
                                                  : "rsvg-convert failed (exit status " + std::to_string(WEXITSTATUS(status)) + ")";
    fail(out_path, "", why + (said.empty() ? "" : ": " + said));
  }
  commit_partial_file(partial, out_path);
}

}  // namespace kvsim::report
