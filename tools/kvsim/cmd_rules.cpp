// kvsim rules: the catalogue of selection rules with their parameters and defaults.
#include <iostream>

#include <boost/program_options.hpp>

#include "command.h"
#include "rules/factory.h"

namespace kvsim::cli {
namespace {

int cmd_rules(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::options_description opts("kvsim rules [--help]");
  opts.add_options()("help,h", "show this help");
  po::variables_map vm;
  std::vector<std::string> rest(args.begin() + 1, args.end());
  po::store(po::command_line_parser(rest).options(opts).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << "Lists every selection rule with its parameters (type, default) and a summary.\n\n" << opts;
    return 0;
  }
  std::cout << "Selection rules. Spec syntax: name(base, key=value, ...), e.g.\n"
               "  critical(ada(snapkv(window=32,kernel=7,pool=max)),alpha=0.5)\n"
               "Several rules: separate specs with ';'. 'default' = every rule below that needs only the\n"
               "observation window and evaluation queries, plus critical(ada(snapkv)); 'all' = every rule\n"
               "below (h2o, expected and chunk need every prompt query stored) plus critical(ada(snapkv)),\n"
               "ada(pyramid(snapkv)), h2o(variant=stepwise) and tova(variant=stepwise).\n\n"
               "Budgets (--budgets 0.2,512): a fraction f of the n_c compressible tokens keeps floor(f*n_c)\n"
               "(at least 1); an integer keeps that many tokens. Either way the count is per selection unit\n"
               "(KV head, or query head with gqa=query) and INCLUDES protected tokens (observation window,\n"
               "sinks), the kvpress convention, so all rules are compared at matched kept-token counts.\n"
               "A budget below a rule's protected count is an error. ada() keeps units*B tokens per layer;\n"
               "pyramid() varies B by layer (variant=int overshoots the total, see its help).\n\n";
  for (const auto& r : rule_catalogue()) {
    std::cout << r.name << "  -  " << r.summary << "\n";
    for (const auto& p : r.params)
      std::cout << "    " << p.name << " (" << p.type << ", default " << (p.default_value.empty() ? "-" : p.default_value)
                << "): " << p.help << "\n";
  }
  return 0;
}

}  // namespace
KVSIM_COMMAND("rules", "list the selection rules, their parameters and defaults", cmd_rules);
}  // namespace kvsim::cli
