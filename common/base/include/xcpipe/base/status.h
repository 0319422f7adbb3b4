// Status and StatusOr<T>: errors as values across every boundary (process, socket, library).
//
// A Status is a canonical code plus a human message. Context is prepended at each hop with
// WithContext(), so a failure deep in the checkpoint reader reaches the user as
// "loading stage 1: shard model-00002-of-00004.safetensors: tensor 'x': offsets overlap".
// The code decides policy: Unavailable retries, Aborted re-plans, InvalidArgument goes back to
// the user; ExitCodeFor maps codes to process exit codes.
//
// Value type; thread-compatible (not shared mutably across threads). Never throws.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace xcpipe {

// Canonical codes. The numeric values are part of the wire protocol (schemas/xcpipe.capnp
// ErrorCode mirrors them); never renumber.
enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument = 1,     // the caller sent something wrong; retrying will not help
  kNotFound = 2,            // a named thing (file, tensor, request) does not exist
  kResourceExhausted = 3,   // out of memory, KV room, queue space or quota
  kUnavailable = 4,         // a peer is unreachable or not ready; retry later
  kDeadlineExceeded = 5,    // a deadline passed before the operation completed
  kAborted = 6,             // the operation was cut short by a fault; re-plan and replay
  kFailedPrecondition = 7,  // the system is not in the state the operation needs
  kInternal = 8,            // an invariant broke: a bug
  kUnimplemented = 9,       // not available in this build or version
  kPermissionDenied = 10,   // authentication or authorisation refused
  kCancelled = 11,          // the caller gave up (client disconnect, shutdown)
  kAlreadyExists = 12,      // a name that must be unique is held (a live worker's id)
};

std::string_view StatusCodeName(StatusCode code);
// Parses "InvalidArgument" etc.; nullopt for anything else.
std::optional<StatusCode> StatusCodeFromName(std::string_view name);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "CodeName: message", or "OK".
  std::string ToString() const;

  // Returns a copy with "context: " prepended to the message; OK stays OK.
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return {}; }
Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status ResourceExhaustedError(std::string message);
Status UnavailableError(std::string message);
Status DeadlineExceededError(std::string message);
Status AbortedError(std::string message);
Status FailedPreconditionError(std::string message);
Status InternalError(std::string message);
Status UnimplementedError(std::string message);
Status PermissionDeniedError(std::string message);
Status CancelledError(std::string message);
Status AlreadyExistsError(std::string message);

// Either a T or a non-OK Status. Accessing value() of an error is a programming error and
// aborts with the status printed (it never throws).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : rep_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  StatusOr(Status status) : rep_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(rep_).ok()) {
      rep_ = Status(StatusCode::kInternal, "StatusOr constructed from an OK status without a value");
    }
  }

  bool ok() const { return std::holds_alternative<T>(rep_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(rep_);
  }

  T& value() & { CheckOk(); return std::get<T>(rep_); }
  const T& value() const& { CheckOk(); return std::get<T>(rep_); }
  T&& value() && { CheckOk(); return std::get<T>(std::move(rep_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void CheckOk() const;
  std::variant<Status, T> rep_;
};

[[noreturn]] void DieOnBadStatusAccess(const Status& status);

template <typename T>
void StatusOr<T>::CheckOk() const {
  if (!ok()) DieOnBadStatusAccess(std::get<Status>(rep_));
}

}  // namespace xcpipe

// Early-return helpers. XCPIPE_RETURN_IF_ERROR(expr) returns the Status if it is not OK.
// XCPIPE_ASSIGN_OR_RETURN(lhs, expr) unwraps a StatusOr or returns its Status.
#define XCPIPE_CONCAT_INNER(a, b) a##b
#define XCPIPE_CONCAT(a, b) XCPIPE_CONCAT_INNER(a, b)
#define XCPIPE_RETURN_IF_ERROR(expr)                  \
  do {                                                \
    ::xcpipe::Status xcpipe_status_ = (expr);         \
    if (!xcpipe_status_.ok()) return xcpipe_status_;  \
  } while (0)
#define XCPIPE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
#define XCPIPE_ASSIGN_OR_RETURN(lhs, expr) \
  XCPIPE_ASSIGN_OR_RETURN_IMPL(XCPIPE_CONCAT(xcpipe_statusor_, __LINE__), lhs, expr)
