// `airlock bundle SUBCOMMAND ...`: keygen, create, verify, inspect, import,
// list. Each returns the process exit code: 0 success, 1 verification
// failed, 2 usage or I/O error.
#pragma once

#include <string>
#include <vector>

namespace airlock::bundler {

int run_bundle_command(const std::vector<std::string>& args);
void print_bundle_usage();

}  // namespace airlock::bundler
