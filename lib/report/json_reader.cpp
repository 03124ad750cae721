#include "report/json_reader.h"

#include <cmath>


#include "core/error.h"
#include "core/json.h"
#include "core/table_io.h"

namespace kvsim::report {

// The report's view of a parsed document (nlohmann does the parsing). Recursive, so the depth is
// capped: a summary.json kvsim wrote is 4 levels deep.
JsonValue JsonValue::convert(const Json& j, const std::string& where, int depth) {
  if (depth > 200) fail(where, "", "JSON nested more than 200 levels deep");
  JsonValue v;
  switch (j.type()) {
    case Json::value_t::null:
    case Json::value_t::discarded: v.number_ = std::nan(""); break;  // writers turn non-finite into null
    case Json::value_t::boolean: v.type_ = JsonValue::Type::boolean; v.boolean_ = j.get<bool>(); break;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: v.type_ = JsonValue::Type::number; v.number_ = j.get<double>(); break;
    case Json::value_t::string: v.type_ = JsonValue::Type::string; v.string_ = j.get<std::string>(); break;
    case Json::value_t::binary: fail(where, "", "binary JSON values are not supported");
    case Json::value_t::array:
      v.type_ = JsonValue::Type::array;
      for (const auto& x : j) v.items_.push_back(convert(x, where, depth + 1));
      break;
    case Json::value_t::object:
      v.type_ = JsonValue::Type::object;
      for (const auto& [k, x] : j.items()) v.members_.emplace_back(k, convert(x, where, depth + 1));
      break;
  }
  return v;
}

JsonValue JsonValue::parse(const std::string& text, const std::string& where) {
  return convert(parse_json(text, where), where, 0);
}

JsonValue JsonValue::read_file(const std::string& path) {
  return parse(read_whole_file(path), path);
}

const JsonValue* JsonValue::find(const std::string& key) const {
  for (const auto& [k, v] : members_)
    if (k == key) return &v;
  return nullptr;
}

std::string JsonValue::to_text() const {
  switch (type_) {
    case Type::null: return "null";
    case Type::boolean: return boolean_ ? "true" : "false";
    case Type::number: return format_double(number_);
    case Type::string: return string_;
    case Type::array: {
      std::string out = "[";
      for (std::size_t i = 0; i < items_.size(); ++i) out += (i ? ", " : "") + items_[i].to_text();
      return out + "]";
    }
    case Type::object: {
      std::string out = "{";
      for (std::size_t i = 0; i < members_.size(); ++i)
        out += (i ? ", " : "") + members_[i].first + ": " + members_[i].second.to_text();
      return out + "}";
    }
  }
  return "";
}

std::string JsonValue::get_string(const std::string& key, const std::string& dflt) const {
  const JsonValue* v = find(key);
  return v ? v->to_text() : dflt;
}

double JsonValue::get_number(const std::string& key, double dflt) const {
  const JsonValue* v = find(key);
  return v && v->is_number() ? v->number_ : dflt;
}

}  // namespace kvsim::report
