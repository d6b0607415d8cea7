// A small command-line parser for the `airlock` tool: "--flag", "--opt V",
// "--opt=V" and positional arguments, with repeated options kept in order.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::bundler {

class Args {
 public:
  // `with_value` lists options that take a value; `flags` those that do not.
  // Anything else starting with "--" is a usage error.
  static Result<Args> parse(const std::vector<std::string>& argv, const std::vector<std::string>& with_value,
                            const std::vector<std::string>& flags);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> get(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

}  // namespace airlock::bundler
