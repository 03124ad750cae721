#pragma once
// Where outputs may go, and what happens to half-written ones. Every output is written to
// "<path>.partial" and renamed onto <path>; a rename replaces whatever <path> is, so a path that
// exists and is not a regular file (a device such as /dev/full, a fifo, a socket, a folder, a
// symbolic link) is refused before anything is written. An existing regular file is replaced
// (documented in the README: outputs of the same name are results of an earlier run).
#include <string>

namespace kvsim {

// Throws kvsim::Error "<path>: exists and is not a regular file ..." (also for <path>.partial).
void check_output_target(const std::string& path);

// Partial files being written: a SIGINT/SIGTERM (after install_partial_file_cleanup) removes them
// before the process ends with the signal, so no ".partial" is left behind.
void register_partial_file(const std::string& partial_path);
void unregister_partial_file(const std::string& partial_path);
// Installs the SIGINT/SIGTERM/SIGHUP handlers (command-line programs only: a library must not
// take Python's Ctrl-C).
void install_partial_file_cleanup();

// "<command>: note: <dir> already holds results (<marker>); they are replaced" on stderr when
// dir/marker exists, so a re-run that overwrites a study says so.
void note_replacing(const std::string& command, const std::string& dir, const std::string& marker);

}  // namespace kvsim
