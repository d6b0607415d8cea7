// nlohmann::json, with its internal checks kept in every build: include
// this instead of <nlohmann/json.hpp>.
//
// The library's JSON_ASSERT is assert(), gone under NDEBUG, and some of
// what it guards is reached from outside input: operator[] on a const
// object with a key it lacks reads past the end of the map. A handler
// that indexes such a key by mistake then corrupts memory or crashes the
// daemon. Here the check throws std::logic_error instead, which the
// request's error handling turns into a 500. (Where the library checks
// inside a noexcept function the throw terminates: a clean stop, not a
// read of freed memory.)
#pragma once

#include <stdexcept>
#include <string>

#if defined(INCLUDE_NLOHMANN_JSON_HPP_) && !defined(AIRLOCK_JSON_ASSERT)
#error "<nlohmann/json.hpp> was included before airlock/common/json.h: include airlock/common/json.h only"
#endif
#define AIRLOCK_JSON_ASSERT 1

namespace airlock::detail {
[[noreturn]] inline void json_check_failed(const char* what) {
  throw std::logic_error(std::string("json: internal check failed: ") + what);
}
}  // namespace airlock::detail

#define JSON_ASSERT(x) ((x) ? static_cast<void>(0) : ::airlock::detail::json_check_failed(#x))

#include <nlohmann/json.hpp>
