#include "core/output_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>

#include "core/error.h"
#include "core/output_path.h"
#include "core/table_io.h"

namespace kvsim {

OutputFolder::OutputFolder(std::string command, std::string dir, std::string marker)
    : command_(std::move(command)), dir_(std::move(dir)), marker_(std::move(marker)) {
  if (dir_.empty()) fail("", "--out", "an output folder is required");
  struct stat st {};
  if (lstat(dir_.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) fail(dir_, "--out", "exists and is not a folder");
  } else if (::mkdir(dir_.c_str(), 0777) == 0) {
    created_ = true;
  } else if (errno == ENOENT) {
    // Parents first (as mkdir -p); only the last component counts as created here.
    std::string cur;
    for (std::size_t i = 1; i <= dir_.size(); ++i)
      if (i == dir_.size() || dir_[i] == '/') {
        cur = dir_.substr(0, i);
        if (::mkdir(cur.c_str(), 0777) != 0 && errno != EEXIST)
          fail(dir_, "--out", std::string("cannot create the folder: ") + std::strerror(errno));
      }
    created_ = true;
  } else if (errno != EEXIST) {
    fail(dir_, "--out", std::string("cannot create the folder: ") + std::strerror(errno));
  }
  lock_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock_fd_ < 0) fail(dir_, "--out", std::string("cannot open the folder: ") + std::strerror(errno));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (err == EWOULDBLOCK)
      fail(dir_, "--out", "another kvsim run is writing this folder (wait for it to end, or choose another --out)");
    fail(dir_, "--out", std::string("cannot lock the folder: ") + std::strerror(err));
  }
  if (created_) register_created_folder(dir_);
  held_results_ = ::access(path(marker_).c_str(), F_OK) == 0;
}

OutputFolder::~OutputFolder() {
  if (created_) {
    unregister_created_folder(dir_);
    if (!done_) ::rmdir(dir_.c_str());  // only if the failed run left it empty
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

void remove_stale_outputs(const std::string& dir, const std::vector<std::string>& outputs,
                          const std::vector<std::string>& written) {
  for (const auto& name : outputs)
    if (std::find(written.begin(), written.end(), name) == written.end()) ::unlink((dir + "/" + name).c_str());
}

void OutputFolder::clear_previous(const std::vector<std::string>& outputs, const std::vector<std::string>& written) {
  ::unlink(path(marker_).c_str());
  remove_stale_outputs(dir_, outputs, written);
}

void OutputFolder::done() {
  done_ = true;
  if (held_results_)
    std::cerr << command_ << ": note: " << dir_ << " held the results of an earlier run (" << marker_
              << "); they were replaced\n";
}

}  // namespace kvsim

namespace kvsim {

void OutputFolder::publish(const std::vector<std::pair<std::string, std::string>>& files,
                           const std::vector<std::string>& outputs) {
  if (files.empty() || files.back().first != marker_) fail(dir_, "", "internal: the marker must be written last");
  std::vector<std::unique_ptr<AtomicOutFile>> out;
  std::vector<std::string> names;
  for (const auto& [name, content] : files) {
    out.push_back(std::make_unique<AtomicOutFile>(path(name)));
    out.back()->stream() << content;
    names.push_back(name);
  }
  for (auto& f : out) f->finish();
  clear_previous(outputs, names);
  for (auto& f : out) f->commit();
  done();
}

}  // namespace kvsim
