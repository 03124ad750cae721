#pragma once
// Short display labels for canonical rule specs: parameters equal to the rule's catalogue
// default are dropped ("critical(ada(snapkv))" instead of a 200-character canonical string).
// Labels stay unique: when two specs would share a label, both keep their full text.
#include <map>
#include <string>
#include <vector>

namespace kvsim {

std::string short_rule_label(const std::string& spec);  // the spec itself when it does not parse
std::map<std::string, std::string> short_rule_labels(const std::vector<std::string>& specs);

}  // namespace kvsim
