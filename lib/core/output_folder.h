#pragma once
// The --out folder of one run (replay, prefill, analyze, sweep). One policy for all of them:
// - the folder is created if missing and locked (flock, released when the process ends however
//   it ends), so a second run into it fails at once with one line instead of mixing files;
// - a run writes every file to a partial file of its own and commits nothing until all are
//   complete; then clear_previous() removes the marker and every output of an earlier run that
//   this run does not write, the files are renamed into place and the marker (summary.json,
//   sweep.json) comes last, and done() says whether an earlier run's results were replaced;
// - a failed run leaves an earlier run's results as they were, and removes a folder it created.
#include <string>
#include <utility>
#include <vector>

namespace kvsim {

class OutputFolder {
 public:
  // Throws kvsim::Error "<dir>: --out: ..." if the folder cannot be made or another run holds it.
  OutputFolder(std::string command, std::string dir, std::string marker);
  ~OutputFolder();
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

  const std::string& dir() const { return dir_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  // Removes the marker first (so a crash from here on leaves no folder that looks complete), then
  // each of `outputs` (the names the command can write) that is not in `written`.
  void clear_previous(const std::vector<std::string>& outputs, const std::vector<std::string>& written);
  // After the marker is committed: prints "<command>: note: <dir> held the results of an earlier
  // run (<marker>); they were replaced" when it did, and keeps the folder.
  void done();
  // The whole commit for outputs held in memory: every (name, content) to a partial file, all
  // finished, clear_previous(outputs, names), renamed in order (the marker must be the last
  // entry), done().
  void publish(const std::vector<std::pair<std::string, std::string>>& files, const std::vector<std::string>& outputs);

 private:
  std::string command_, dir_, marker_;
  int lock_fd_ = -1;
  bool created_ = false, held_results_ = false, done_ = false;
};

// Removes dir/<name> for each name in `outputs` not in `written` (never throws; used for the
// per-trace folders of a sweep, which the sweep's own lock covers).
void remove_stale_outputs(const std::string& dir, const std::vector<std::string>& outputs,
                          const std::vector<std::string>& written);

}  // namespace kvsim
