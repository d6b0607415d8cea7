// Status and Result<T>: how every fallible Airlock call reports failure.
//
// Airlock libraries do not throw. A function that can fail returns a Status
// (or a Result<T> carrying either a value or a non-OK Status). Each code maps
// one-to-one to an HTTP status (for airlockd) and a process exit code (for
// the command-line tools), so a failure deep in a library surfaces to the
// user with the same meaning everywhere:
//
//   code                 HTTP  exit  meaning
//   kOk                  200   0     success
//   kInvalidArgument     400   2     the caller asked for something malformed
//   kUnauthenticated     401   2     missing or wrong credentials
//   kPermissionDenied    403   2     credentials valid, action not allowed
//   kNotFound            404   2     a named thing does not exist
//   kAlreadyExists       409   2     the target exists and will not be replaced
//   kVerificationFailed  422   1     input was checked and is not trustworthy
//                                    (bad signature, hash mismatch, hostile
//                                    archive, revoked key, rollback, expiry)
//   kResourceExhausted   429   2     a limit was hit; retrying later may work
//   kUnavailable         503   2     the service cannot take work right now
//   kIoError             500   2     the operating system refused an operation
//   kInternal            500   2     a bug: an invariant did not hold
//
// Thread-safety: Status and Result are values; distinct objects may be used
// from distinct threads without synchronisation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace airlock {

enum class StatusCode : std::uint8_t {
  kOk = 0,
  kInvalidArgument,
  kUnauthenticated,
  kPermissionDenied,
  kNotFound,
  kAlreadyExists,
  kVerificationFailed,
  kResourceExhausted,
  kUnavailable,
  kIoError,
  kInternal,
};

// Stable lower-case name of a code ("verification_failed"), used in logs,
// JSON error bodies and tests.
std::string_view status_code_name(StatusCode code);

// The HTTP status and process exit code that a code maps to (table above).
int http_status(StatusCode code);
int exit_code(StatusCode code);

class [[nodiscard]] Status {
 public:
  // An OK status. Cheap: holds no message.
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "verification_failed: chunk 3 of model.gguf: SHA-256 mismatch"
  std::string to_string() const;

  // Returns a copy with "context: " prepended to the message; OK stays OK.
  Status with_context(std::string_view context) const;

  // Explicitly discard a status where ignoring it is the right thing.
  void ignore() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Helpers that read like the code they produce.
inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status already_exists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status verification_failed(std::string m) { return {StatusCode::kVerificationFailed, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
// An I/O error carrying strerror(errno_value) after the message.
Status io_error(std::string_view what, int errno_value);

// Either a T or a non-OK Status. Constructing a Result from an OK Status is a
// programming error and yields kInternal instead.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.is_ok()) status_ = internal_error("Result constructed from an OK status");
  }

  bool is_ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  // Precondition: is_ok(). Accessing the value of a failed Result aborts.
  T& value() & { check(); return *value_; }
  const T& value() const& { check(); return *value_; }
  T&& value() && { check(); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  void check() const;
  std::optional<T> value_;
  Status status_;
};

[[noreturn]] void abort_on_bad_result_access(const Status& status);

template <typename T>
void Result<T>::check() const {
  if (!value_.has_value()) abort_on_bad_result_access(status_);
}

}  // namespace airlock

// Propagate a failed Status from the current function.
#define AIRLOCK_RETURN_IF_ERROR(expr)                   \
  do {                                                  \
    ::airlock::Status airlock_status_ = (expr);         \
    if (!airlock_status_.is_ok()) return airlock_status_; \
  } while (0)

#define AIRLOCK_CONCAT_INNER(a, b) a##b
#define AIRLOCK_CONCAT(a, b) AIRLOCK_CONCAT_INNER(a, b)

// AIRLOCK_ASSIGN_OR_RETURN(auto x, make_x()); declares x from a Result or
// returns its Status.
#define AIRLOCK_ASSIGN_OR_RETURN(lhs, expr)                                  \
  auto AIRLOCK_CONCAT(airlock_result_, __LINE__) = (expr);                   \
  if (!AIRLOCK_CONCAT(airlock_result_, __LINE__).is_ok())                    \
    return AIRLOCK_CONCAT(airlock_result_, __LINE__).status();               \
  lhs = std::move(AIRLOCK_CONCAT(airlock_result_, __LINE__)).value()
