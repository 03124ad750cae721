// kvsim: dispatches to the registered subcommands; every kvsim::Error becomes one line on
// stderr and exit code 1 (2 for usage errors).
#include <algorithm>
#include <cstdio>
#include <iostream>

#include <boost/program_options/errors.hpp>

#include "command.h"
#include "core/error.h"

namespace kvsim::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}

namespace {

void print_usage() {
  auto cmds = command_registry();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  std::cout << "kvsim " << KVSIM_VERSION
            << " - replay KV-cache selection rules on attention traces\n\n"
               "usage: kvsim <command> [options]   (kvsim <command> --help for its options)\n\ncommands:\n";
  for (const auto& c : cmds) std::printf("  %-10s %s\n", c.name.c_str(), c.summary.c_str());
}

}  // namespace
}  // namespace kvsim::cli

int main(int argc, char** argv) {
  using namespace kvsim::cli;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::string(argv[1]) == "--version") {
    std::cout << "kvsim " << KVSIM_VERSION << "\n";
    return 0;
  }
  const std::string name = argv[1];
  for (const auto& c : command_registry()) {
    if (c.name != name) continue;
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
      return c.run(args);
    } catch (const boost::program_options::error& e) {
      std::cerr << "kvsim " << name << ": " << e.what() << " (see kvsim " << name << " --help)\n";
      return 2;
    } catch (const kvsim::Error& e) {
      std::cerr << "kvsim " << name << ": error: " << e.what() << "\n";
      return 1;
    } catch (const std::bad_alloc&) {
      std::cerr << "kvsim " << name << ": error: out of memory\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "kvsim " << name << ": internal error: " << e.what() << "\n";
      return 3;
    }
  }
  std::cerr << "kvsim: unknown command '" << name << "' (kvsim --help lists them)\n";
  return 2;
}
