// `airlock rag ...`: client commands for a running airlockd's documents and
// grounded answers, over its local HTTP API (docs/rag.md).
//
// The daemon's address must be a numeric IP (--url http://127.0.0.1:8080,
// or AIRLOCK_URL): nothing here resolves a host name. The API key comes from
// --key-file or the AIRLOCK_API_KEY environment variable, never from the
// command line (where `ps` would show it).
//
// Exit codes: 0 success; 1 some documents were refused (ingest), or the
// answer was handed off (query); 2 usage, connection or request errors.
#pragma once

#include <string>
#include <vector>

namespace airlock::bundler {

int run_rag_command(const std::vector<std::string>& argv);
void print_rag_usage();

}  // namespace airlock::bundler
