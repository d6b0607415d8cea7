#include "airlock/common/log.h"

#include <mutex>

#include <spdlog/sinks/stdout_sinks.h>

namespace airlock {
namespace {

std::shared_ptr<spdlog::logger> make_logger(spdlog::level::level_enum level) {
  auto logger = std::make_shared<spdlog::logger>(
      "airlock", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_level(level);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  return logger;
}

std::shared_ptr<spdlog::logger>& logger_slot() {
  static std::shared_ptr<spdlog::logger> slot = make_logger(spdlog::level::warn);
  return slot;
}

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

}  // namespace

bool parse_log_level(std::string_view name, LogLevel* out) {
  if (name == "debug") *out = LogLevel::kDebug;
  else if (name == "info") *out = LogLevel::kInfo;
  else if (name == "warn") *out = LogLevel::kWarn;
  else if (name == "error") *out = LogLevel::kError;
  else if (name == "off") *out = LogLevel::kOff;
  else return false;
  return true;
}

void init_logging(LogLevel level) { logger_slot() = make_logger(to_spdlog(level)); }

spdlog::logger& log() { return *logger_slot(); }

}  // namespace airlock
