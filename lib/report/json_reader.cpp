#include "report/json_reader.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/table_io.h"

namespace kvsim::report {

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  JsonValue document() {
    JsonValue v = value(0);
    skip_ws();
    if (pos_ != s_.size()) error("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(where_, "offset " + std::to_string(pos_), what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  bool consume(const char* lit) {
    const std::string l(lit);
    if (s_.compare(pos_, l.size(), l) == 0) {
      pos_ += l.size();
      return true;
    }
    return false;
  }
  JsonValue value(int depth) {
    if (depth > 200) error("nesting too deep");
    skip_ws();
    if (pos_ >= s_.size()) error("unexpected end of input");
    JsonValue v;
    const char c = s_[pos_];
    if (c == '{') {
      v.type_ = JsonValue::Type::object;
      ++pos_;
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return v;
      }
      for (;;) {
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != '"') error("expected a string key");
        std::string k = string_literal();
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != ':') error("expected ':'");
        ++pos_;
        v.members_.emplace_back(std::move(k), value(depth + 1));
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return v; }
        error("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = JsonValue::Type::array;
      ++pos_;
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return v;
      }
      for (;;) {
        v.items_.push_back(value(depth + 1));
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return v; }
        error("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = JsonValue::Type::string;
      v.string_ = string_literal();
      return v;
    }
    if (consume("true")) { v.type_ = JsonValue::Type::boolean; v.boolean_ = true; return v; }
    if (consume("false")) { v.type_ = JsonValue::Type::boolean; return v; }
    if (consume("null")) { v.number_ = std::nan(""); return v; }
    if (c == '-' || (c >= '0' && c <= '9')) {
      const char* begin = s_.c_str() + pos_;
      char* end = nullptr;
      v.type_ = JsonValue::Type::number;
      v.number_ = std::strtod(begin, &end);
      if (end == begin) error("bad number");
      pos_ += static_cast<std::size_t>(end - begin);
      return v;
    }
    error(std::string("unexpected character '") + c + "'");
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  unsigned hex4() {
    if (pos_ + 4 > s_.size()) error("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<unsigned>(h - 'A' + 10);
      else error("bad \\u escape");
    }
    return v;
  }
  std::string string_literal() {
    ++pos_;  // opening quote
    std::string out;
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) break;
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && consume("\\u")) cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4() - 0xDC00);
          append_utf8(out, cp);
          break;
        }
        default: error("bad escape");
      }
    }
    error("unterminated string");
  }

  const std::string& s_;
  std::string where_;
  std::size_t pos_ = 0;
};

JsonValue JsonValue::parse(const std::string& text, const std::string& where) {
  return JsonParser(text, where).document();
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
