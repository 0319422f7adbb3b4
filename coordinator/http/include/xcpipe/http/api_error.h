// ApiError: a refusal as the HTTP API reports it, an HTTP status plus OpenAI's nested error
// object, so the official clients raise their typed errors (BadRequestError, AuthenticationError,
// RateLimitError, ...) with our message:
//
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "messages", "code": null}}
//
// Statuses: 400 bad request, 401 missing or wrong key, 404 unknown model or path, 405 wrong
// method, 413 body too large, 429 busy (with Retry-After), 431 headers too large, 503 not
// serving, 500 only for bugs. Every message says what was wrong and what is expected.
//
// Values; pure functions; thread-safe.
#pragma once

#include <string>

#include "xcpipe/base/status.h"

namespace xcpipe::http {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;      // the request field at fault ("" renders as null)
  std::string code;       // a short machine-readable code ("" renders as null)
  int retry_after_s = 0;  // > 0: sent as the Retry-After header (429, 503)
};

ApiError BadRequest(std::string message, std::string param = "", std::string code = "");

// The JSON body {"error": {...}}.
std::string RenderErrorBody(const ApiError& error);

// The HTTP status a Status from the serving path maps to: InvalidArgument/OutOfRange 400,
// NotFound 404, ResourceExhausted 429, Unavailable/Aborted/FailedPrecondition 503,
// DeadlineExceeded 504, PermissionDenied 403, Unauthenticated 401, the rest 500.
ApiError ErrorFromStatus(const Status& status);

// The reason phrase of the statuses this API sends ("Bad Request", ...).
const char* ReasonPhrase(int status);

}  // namespace xcpipe::http
