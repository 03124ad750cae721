#pragma once
// Shared command-line parsing of the subcommands.
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "core/error.h"
#include "replay/protocol.h"

namespace kvsim::cli {

// Parses args[1..] (args[0] is the subcommand name) against `opts` and runs the notifiers.
// With `positional`, up to max_count positional arguments (-1: any number) fill that option.
inline boost::program_options::variables_map parse_args(const std::vector<std::string>& args,
                                                        const boost::program_options::options_description& opts,
                                                        const char* positional = nullptr, int max_count = 1) {
  namespace po = boost::program_options;
  po::positional_options_description pos;
  po::command_line_parser parser(std::vector<std::string>(args.begin() + 1, args.end()));
  parser.options(opts);
  if (positional) {
    pos.add(positional, max_count);
    parser.positional(pos);
  }
  po::variables_map vm;
  po::store(parser.run(), vm);
  po::notify(vm);
  return vm;
}

// --compression-point and --eval into the protocol options; a bad value is a usage error.
inline void set_protocol_modes(ProtocolOptions& protocol, const std::string& compression_point,
                               const std::string& eval, const std::string& name = "oneshot", i64 every = 0,
                               const std::string& start = "full", const std::string& admission = "evict") {
  try {
    protocol.compression_point = parse_compression_point(compression_point);
    protocol.eval = parse_eval_mode(eval);
    set_decode_protocol(protocol, name, every, start, admission);
  } catch (const Error& e) {
    throw boost::program_options::error(e.what());
  }
}

}  // namespace kvsim::cli
