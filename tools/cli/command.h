#pragma once
// Subcommand registry: each cmd_*.cpp registers itself with KVSIM_COMMAND, so adding a
// subcommand touches no other file.
#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace kvsim::cli {

// args[0] is the subcommand name; returns the process exit code.
using CommandFn = std::function<int(const std::vector<std::string>& args)>;

struct Command {
  std::string name, summary;
  CommandFn run;
};

std::vector<Command>& command_registry();
void print_usage(std::ostream& out);
// Runs args[0] with args; usage errors give 2, kvsim::Error 1, each with one line on err.
// Any other exception propagates (the binary reports it as an internal error; the Python module
// re-raises it, e.g. a Python rule's own exception).
int run_command(const std::vector<std::string>& args, std::ostream& err);

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFn fn) {
    command_registry().push_back({name, summary, std::move(fn)});
  }
};

}  // namespace kvsim::cli

#define KVSIM_COMMAND(name, summary, fn) \
  static ::kvsim::cli::CommandRegistrar kvsim_command_registrar_##fn(name, summary, fn)
