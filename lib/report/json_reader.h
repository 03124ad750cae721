#pragma once
// The report's read-only view of summary.json and the other JSON files kvsim writes, parsed by
// nlohmann::json (core/json.h). Objects keep their key order so the report can show them as
// written; null (a non-finite number when written) reads as NaN.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"

namespace kvsim::report {

class JsonValue {
 public:
  enum class Type { null, boolean, number, string, array, object };

  static JsonValue parse(const std::string& text, const std::string& where);
  static JsonValue read_file(const std::string& path);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_object() const { return type_ == Type::object; }
  bool is_array() const { return type_ == Type::array; }
  bool is_number() const { return type_ == Type::number; }
  bool is_string() const { return type_ == Type::string; }

  // Member lookup; nullptr when absent or when this is not an object.
  const JsonValue* find(const std::string& key) const;
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }
  const std::vector<JsonValue>& items() const { return items_; }

  double number() const { return number_; }  // NaN for null (writers turn non-finite into null)
  bool boolean() const { return boolean_; }
  const std::string& string() const { return string_; }
  // Compact text of any value: strings unquoted, numbers shortest round-trip, others as JSON.
  std::string to_text() const;

  // Convenience accessors with defaults for absent members.
  std::string get_string(const std::string& key, const std::string& dflt = "") const;
  double get_number(const std::string& key, double dflt) const;

 private:
  static JsonValue convert(const Json& j, const std::string& where, int depth);
  Type type_ = Type::null;
  bool boolean_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

}  // namespace kvsim::report
