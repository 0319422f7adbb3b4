#include "xcpipe/http/api_error.h"

#include <nlohmann/json.hpp>

namespace xcpipe::http {

ApiError BadRequest(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::string RenderErrorBody(const ApiError& error) {
  nlohmann::json inner = {{"message", error.message}, {"type", error.type}};
  inner["param"] = error.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.param);
  inner["code"] = error.code.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.code);
  // Replacement characters rather than an exception: a message may quote a client's bytes.
  return nlohmann::json{{"error", inner}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

ApiError ErrorFromStatus(const Status& status) {
  ApiError e;
  e.message = status.message();
  switch (status.code()) {
    case StatusCode::kOk:
    case StatusCode::kInvalidArgument:
      e.status = 400;
      break;
    case StatusCode::kNotFound:
      e.status = 404;
      e.type = "not_found_error";
      break;
    case StatusCode::kResourceExhausted:
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "busy";
      e.retry_after_s = 1;
      break;
    case StatusCode::kUnavailable:
    case StatusCode::kAborted:
    case StatusCode::kFailedPrecondition:
      e.status = 503;
      e.type = "service_unavailable";
      e.retry_after_s = 1;
      break;
    case StatusCode::kDeadlineExceeded:
      e.status = 504;
      e.type = "timeout";
      break;
    case StatusCode::kPermissionDenied:
      e.status = 403;
      e.type = "permission_error";
      break;
    case StatusCode::kUnimplemented:
      e.status = 400;
      e.code = "unsupported";
      break;
    case StatusCode::kCancelled:
    case StatusCode::kAlreadyExists:  // between workers and the coordinator only
    case StatusCode::kInternal:
      e.status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Payload Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

}  // namespace xcpipe::http
