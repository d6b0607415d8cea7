#include "args.h"

#include <algorithm>

namespace airlock::bundler {

Result<Args> Args::parse(const std::vector<std::string>& argv, const std::vector<std::string>& with_value,
                         const std::vector<std::string>& flags) {
  Args a;
  auto contains = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      a.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (std::size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (contains(flags, name)) {
      if (value) return invalid_argument("--" + name + " takes no value");
      a.values_[name].push_back("");
    } else if (contains(with_value, name)) {
      if (!value) {
        if (i + 1 >= argv.size()) return invalid_argument("--" + name + " needs a value");
        value = argv[++i];
      }
      a.values_[name].push_back(*value);
    } else {
      return invalid_argument("unknown option --" + name);
    }
  }
  return a;
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

}  // namespace airlock::bundler
