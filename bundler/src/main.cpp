// `airlock`: the command-line tool for staging hosts and enclave operators.
#include <cstdio>
#include <string>
#include <vector>

#include "airlock/common/log.h"
#include "airlock/common/version.h"
#include "bundle_commands.h"
#include "rag_commands.h"
#include "state_commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  airlock::init_logging(airlock::LogLevel::kWarn);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::printf("airlock %s: signed model bundles for air-gapped LLM appliances\n\n", airlock::kVersion);
    airlock::bundler::print_bundle_usage();
    airlock::bundler::print_state_usage();
    airlock::bundler::print_rag_usage();
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version" || args[0] == "version") {
    std::printf("airlock %s\n", airlock::kVersion);
    return 0;
  }
  if (args[0] == "bundle") return airlock::bundler::run_bundle_command({args.begin() + 1, args.end()});
  if (args[0] == "keys") return airlock::bundler::run_keys_command({args.begin() + 1, args.end()});
  if (args[0] == "rag") return airlock::bundler::run_rag_command({args.begin() + 1, args.end()});
  if (args[0] == "audit") return airlock::bundler::run_audit_command({args.begin() + 1, args.end()});
  std::fprintf(stderr, "airlock: unknown command '%s' (try 'airlock help')\n", args[0].c_str());
  return 2;
}
