#pragma once
// kvsim sweep --config study.toml: a study's settings in a file. Every key is a long option of
// kvsim sweep (traces, rules, budgets, layers, window, compression-point, per-query, ...; '_' may
// stand for '-'), its value a string, number, boolean (a flag: true sets it) or an array (traces
// and budgets joined with ',', rules with ';'). Options given on the command line override the
// file's. Errors name the file and the key.
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace kvsim::cli {

struct StudyConfig {
  std::vector<std::string> args;  // the file as command-line arguments: --traces a.h5,b.h5 ...
  std::string json;               // {"path": ..., "settings": {...}} for sweep.json
};

StudyConfig read_study_config(const std::string& path, const boost::program_options::options_description& opts);

}  // namespace kvsim::cli
