// The subcommand registry and the one place that turns their exceptions into messages and exit
// codes, shared by the kvsim binary and the Python module.
#include "command.h"

#include <algorithm>
#include <cstdio>
#include <new>

#include <boost/program_options/errors.hpp>

#include "core/error.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "kernels/isa.h"

namespace kvsim::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}

void print_usage(std::ostream& out) {
  auto cmds = command_registry();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  out << "kvsim " << KVSIM_VERSION
      << " - replay KV-cache selection rules on attention traces\n\n"
         "usage: kvsim <command> [options]   (kvsim <command> --help for its options)\n\ncommands:\n";
  char line[256];
  for (const auto& c : cmds) {
    std::snprintf(line, sizeof line, "  %-10s %s\n", c.name.c_str(), c.summary.c_str());
    out << line;
  }
}

int run_command(const std::vector<std::string>& args, std::ostream& err) {
  if (args.empty()) return 2;
  const std::string& name = args[0];
  for (const auto& c : command_registry()) {
    if (c.name != name) continue;
    try {
      set_thread_count(0);  // OMP_NUM_THREADS beyond reason is an error before any thread starts
      kernels::check_isa_setting();  // so is a KVSIM_FORCE_ISA this CPU cannot honour
      return c.run(args);
    } catch (const boost::program_options::error& e) {
      err << "kvsim " << name << ": " << printable(e.what()) << " (see kvsim " << name << " --help)\n";
      return 2;
    } catch (const kvsim::Error& e) {
      err << "kvsim " << name << ": error: " << printable(e.what()) << "\n";
      return 1;
    } catch (const std::bad_alloc&) {
      err << "kvsim " << name << ": error: out of memory\n";
      return 1;
    }
  }
  err << "kvsim: unknown command '" << name << "' (kvsim --help lists them)\n";
  return 2;
}

}  // namespace kvsim::cli
