#pragma once
// Shared command-line parsing for the subcommands that take one positional TRACE argument.
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace kvsim::cli {

// Parses args[1..] (args[0] is the subcommand name) against `opts`, the first positional
// argument filling the option "trace", and runs the notifiers.
inline boost::program_options::variables_map parse_trace_args(
    const std::vector<std::string>& args, const boost::program_options::options_description& opts) {
  namespace po = boost::program_options;
  po::positional_options_description pos;
  pos.add("trace", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(std::vector<std::string>(args.begin() + 1, args.end()))
                .options(opts).positional(pos).run(), vm);
  po::notify(vm);
  return vm;
}

}  // namespace kvsim::cli
