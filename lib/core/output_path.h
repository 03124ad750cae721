#pragma once
// Where outputs may go, and what happens to half-written ones. Every output is written to a
// partial file of its own, "<path>.<pid>-<random>.partial" created with O_EXCL (two writers of
// one output never share one), and renamed onto <path>; a rename replaces whatever <path> is, so a path that
// exists and is not a regular file (a device such as /dev/full, a fifo, a socket, a folder, a
// symbolic link) is refused before anything is written. An existing regular file is replaced
// (documented in the README: outputs of the same name are results of an earlier run).
#include <string>

namespace kvsim {

// Throws kvsim::Error "<path>: exists and is not a regular file ...".
void check_output_target(const std::string& path);

// Creates a new empty partial file for path (unique name, O_EXCL, mode 0666 & umask) and
// registers it for removal on a signal. Throws kvsim::Error naming path if it cannot.
std::string create_partial_file(const std::string& path);
// Removes an uncommitted partial file and unregisters it (never throws).
void discard_partial_file(const std::string& partial) noexcept;
// Renames the partial file onto path and unregisters it. Throws kvsim::Error on failure.
void commit_partial_file(const std::string& partial, const std::string& path);
// True for names this module gives partial files ("*.partial").
bool is_partial_name(const std::string& name);

// Partial files being written: a SIGINT/SIGTERM (after install_partial_file_cleanup) removes them
// before the process ends with the signal, so no ".partial" is left behind.
void register_partial_file(const std::string& partial_path);
void unregister_partial_file(const std::string& partial_path);
// A folder this run created (OutputFolder): a signal removes it after the partial files, if
// it is empty by then.
void register_created_folder(const std::string& dir);
void unregister_created_folder(const std::string& dir);
// Installs the SIGINT/SIGTERM/SIGHUP handlers (command-line programs only: a library must not
// take Python's Ctrl-C).
void install_partial_file_cleanup();


}  // namespace kvsim
