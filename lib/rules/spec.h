#pragma once
// Spec-string syntax tree: name(arg, arg, key=value, ...), where a positional argument is a
// nested spec (a base rule) and key=value pairs are parameters. Examples:
//   snapkv(window=32,kernel=7,pool=max)    critical(ada(snapkv),alpha=0.5,norm=l1)
#include <string>
#include <utility>
#include <vector>

namespace kvsim {

struct Spec {
  std::string name;
  std::vector<Spec> args;                                   // nested rule specs
  std::vector<std::pair<std::string, std::string>> params;  // in written order
  bool operator==(const Spec&) const = default;
};

// Throws kvsim::Error("rule spec '<text>': <what> at column N").
Spec parse_spec(const std::string& text);
// Canonical text: name(args...,key=value,...) with no spaces; "name" alone when empty.
std::string print_spec(const Spec& spec);

}  // namespace kvsim
