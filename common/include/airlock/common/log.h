// Logging for every Airlock library and program, through spdlog.
//
// Libraries log through airlock::log() and never configure sinks; programs
// call init_logging() once at start. Before init_logging() the logger writes
// warnings and above to stderr, so a library used from a test still reports
// trouble.
//
// Thread-safety: log() and the logger it returns are safe to use from any
// thread; init_logging() must be called before other threads start logging.
#pragma once

#include <memory>
#include <string_view>

#include <spdlog/spdlog.h>

namespace airlock {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

// Parses "debug", "info", "warn", "error", "off" into *out; returns false
// (leaving *out alone) for anything else.
bool parse_log_level(std::string_view name, LogLevel* out);

// Configures the process-wide logger to write to stderr at `level`.
void init_logging(LogLevel level);

// The process-wide logger ("airlock"). Never null.
spdlog::logger& log();

}  // namespace airlock
