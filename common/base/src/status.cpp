#include "xcpipe/base/status.h"

#include <array>
#include <cstdio>
#include <cstdlib>

namespace xcpipe {
namespace {

constexpr std::array<std::string_view, 13> kCodeNames = {
    "OK",      "InvalidArgument",    "NotFound", "ResourceExhausted", "Unavailable",      "DeadlineExceeded",
    "Aborted", "FailedPrecondition", "Internal", "Unimplemented",     "PermissionDenied", "Cancelled",
    "AlreadyExists"};

}  // namespace

std::string_view StatusCodeName(StatusCode code) {
  auto index = static_cast<size_t>(code);
  return index < kCodeNames.size() ? kCodeNames[index] : std::string_view("Unknown");
}

std::optional<StatusCode> StatusCodeFromName(std::string_view name) {
  for (size_t i = 0; i < kCodeNames.size(); ++i) {
    if (kCodeNames[i] == name) return static_cast<StatusCode>(i);
  }
  return std::nullopt;
}

Status::Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {
  if (code_ == StatusCode::kOk) message_.clear();
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string message(context);
  message += ": ";
  message += message_;
  return Status(code_, std::move(message));
}

Status InvalidArgumentError(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
Status NotFoundError(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
Status ResourceExhaustedError(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
Status UnavailableError(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
Status DeadlineExceededError(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
Status AbortedError(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
Status FailedPreconditionError(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
Status InternalError(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
Status UnimplementedError(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
Status PermissionDeniedError(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
Status CancelledError(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
Status AlreadyExistsError(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }

void DieOnBadStatusAccess(const Status& status) {
  std::fprintf(stderr, "xcpipe: fatal: value() of a StatusOr holding an error: %s\n", status.ToString().c_str());
  std::abort();
}

}  // namespace xcpipe

#include "xcpipe/base/exit_codes.h"

namespace xcpipe {

ExitCode ExitCodeFor(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk: return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kAlreadyExists:  // a configuration error: two processes given one name
    case StatusCode::kPermissionDenied: return kExitInvalidInput;
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded: return kExitUnavailable;
    case StatusCode::kUnimplemented: return kExitNotImplemented;
    case StatusCode::kResourceExhausted:
    case StatusCode::kAborted:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kInternal:
    case StatusCode::kCancelled: return kExitFailure;
  }
  return kExitFailure;
}

}  // namespace xcpipe
