#pragma once
// The one error type of the HTTP layer: an HTTP status plus OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
#include <stdexcept>
#include <string>

namespace dsv2::server {

struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status_, std::string message, std::string param_ = "", std::string code_ = "",
           std::string type_ = "invalid_request_error")
      : std::runtime_error(std::move(message)),
        status(status_),
        type(std::move(type_)),
        param(std::move(param_)),
        code(std::move(code_)) {}
};

// The error object as JSON text.
std::string error_body(const ApiError& e);

}  // namespace dsv2::server
