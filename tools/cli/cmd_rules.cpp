// kvsim rules: the catalogue of selection rules with their parameters and defaults.
#include <iostream>

#include <boost/program_options.hpp>

#include "command.h"
#include "rules/factory.h"
#include "rules/presets.h"

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
               "Budgets (--budgets 0.2,cr=0.8,512): a fraction f of the n_c compressible tokens keeps\n"
               "floor(f*n_c) (at least 1); cr=R is kvpress's compression ratio, keeping max(1, int(n_c*(1-R)))\n"
               "with kvpress's own float arithmetic (the unrounded n_c*(1-R) also drives pyramid's float\n"
               "schedule and CriticalKV's first stage, as in kvpress); an integer keeps that many tokens.\n"
               "Either way the count is per selection unit (KV head, or query head with gqa=query) and\n"
               "INCLUDES protected tokens (observation window, sinks), the kvpress convention, so all rules\n"
               "are compared at matched kept-token counts.\n"
               "A budget below a rule's protected count is an error. ada() keeps units*B tokens per layer;\n"
               "pyramid() varies B by layer around B (variant=int, the original, overshoots the total).\n"
               "The table a replay prints marks with * a rule whose mean kept count is not its budget.\n\n"
               "kvpress compatibility (tools/kvpress-parity checks it against kvpress's own code): SnapKV,\n"
               "TOVA, Knorm, KeyDiff (block=0 and BlockPress), StreamingLLM, ObservedAttention = h2o,\n"
               "pyramid(variant=float), ada(window_in_floor=true), critical(...), critical(ada(...)) with\n"
               "floor_in_stage1=true (the default), chunkkv, chunk, expected(space=linear) and think keep\n"
               "kvpress's sets outside exact ties. Readings of the papers that kvpress does not follow stay\n"
               "reachable: pyramid(variant=int), ada(variant=A), critical(floor_in_stage1=false). expected's\n"
               "default space=log departs from kvpress on purpose (float32 softmax underflows to zeros).\n\n";
  std::cout << "kvpress presets (NAME@kvpress: exactly kvpress's press with its default arguments; also\n"
               "inside wrappers, e.g. critical(snapkv@kvpress)):\n";
  for (const auto& p : kvpress_presets())
    std::cout << "  " << p.name << " = " << p.spec << "   (kvpress " << p.kvpress << ")\n";
  std::cout << "\n";
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
