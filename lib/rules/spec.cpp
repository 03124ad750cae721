// Recursive-descent parser for rule spec strings (spec.h). Grammar:
//   spec  := name [ '(' [ item { ',' item } ] ')' ]
//   item  := key '=' value | spec
//   name, key := [A-Za-z_][A-Za-z0-9_]*      value := one or more chars other than , ( ) = space
// Spaces around tokens are ignored. Errors give a 1-based column into the original text.
#include "rules/spec.h"

#include <cctype>

#include "core/error.h"
#include "core/text.h"

namespace kvsim {
namespace {

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Spec parse_all() {
    skip_space();
    if (pos_ == text_.size()) error("empty spec");
    Spec s = parse_node();
    skip_space();
    if (pos_ != text_.size()) error("unexpected '" + utf8_char_at(text_, pos_) + "'");
    return s;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    throw Error("rule spec '" + shorten_utf8(text_, 120) + "': " + what + " at column " + std::to_string(pos_ + 1));
  }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool at(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
  static bool ident_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
  static bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

  std::string parse_ident(const char* what) {
    if (pos_ >= text_.size()) error(std::string("expected ") + what + ", found end of text");
    if (!ident_start(text_[pos_])) error(std::string("expected ") + what + ", found '" + utf8_char_at(text_, pos_) + "'");
    std::size_t b = pos_;
    while (pos_ < text_.size() && ident_char(text_[pos_])) ++pos_;
    return text_.substr(b, pos_ - b);
  }

  std::string parse_value(const std::string& key) {
    skip_space();
    std::size_t b = pos_;
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == ',' || c == '(' || c == ')' || c == '=' || std::isspace(static_cast<unsigned char>(c))) break;
      ++pos_;
    }
    if (pos_ == b) error("missing value for parameter '" + key + "'");
    return text_.substr(b, pos_ - b);
  }

  // Real specs nest a few levels (critical(ada(pyramid(snapkv)))); a limit keeps a hostile
  // string from overflowing the stack of this recursive parser.
  static constexpr int kMaxDepth = 32;

  Spec parse_node() {
    if (++depth_ > kMaxDepth) error("rules nested more than " + std::to_string(kMaxDepth) + " deep");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    Spec s;
    s.name = parse_ident("a rule name");
    skip_space();
    if (!at('(')) return s;
    ++pos_;
    skip_space();
    if (at(')')) {
      ++pos_;
      return s;
    }
    for (;;) {
      skip_space();
      std::size_t item_start = pos_;
      std::string ident = parse_ident("a rule or a key=value parameter");
      skip_space();
      if (at('=')) {
        ++pos_;
        for (const auto& [k, v] : s.params)
          if (k == ident) {
            pos_ = item_start;
            error("parameter '" + ident + "' given twice");
          }
        s.params.emplace_back(ident, parse_value(ident));
      } else {
        if (!s.params.empty()) {
          pos_ = item_start;
          error("nested rule '" + ident + "' after key=value parameters");
        }
        pos_ = item_start;
        s.args.push_back(parse_node());
      }
      skip_space();
      if (at(',')) {
        ++pos_;
        continue;
      }
      if (at(')')) {
        ++pos_;
        return s;
      }
      if (pos_ == text_.size()) error("missing ')'");
      error("expected ',' or ')', found '" + utf8_char_at(text_, pos_) + "'");
    }
  }

  const std::string& text_;
  std::size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Spec parse_spec(const std::string& text) { return Parser(text).parse_all(); }

std::string print_spec(const Spec& spec) {
  if (spec.args.empty() && spec.params.empty()) return spec.name;
  std::string out = spec.name + "(";
  bool first = true;
  for (const auto& a : spec.args) {
    if (!first) out += ',';
    first = false;
    out += print_spec(a);
  }
  for (const auto& [k, v] : spec.params) {
    if (!first) out += ',';
    first = false;
    out += k + "=" + v;
  }
  return out + ")";
}

}  // namespace kvsim
