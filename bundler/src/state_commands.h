// `airlock keys ...` and `airlock audit ...`: the enclave operator's tools
// for airlockd's API keys and audit log, working directly on the daemon's
// state directory (--state DIR, default /var/lib/airlock). Exit codes: 0
// success, 1 a check failed (audit verify), 2 usage or I/O error.
#pragma once

#include <string>
#include <vector>

namespace airlock::bundler {

int run_keys_command(const std::vector<std::string>& args);
int run_audit_command(const std::vector<std::string>& args);
void print_state_usage();

}  // namespace airlock::bundler
