#include "serving_context.h"

#include <fmt/format.h>

#include <random>

namespace helios::serve {

std::string server_request_id(std::string_view kind) {
  static const std::string prefix = [] {
    std::random_device device;
    return fmt::format("{:08x}", device());
  }();
  static std::atomic<uint64_t> counter{0};
  return fmt::format("{}-{}-{}", kind, prefix, counter.fetch_add(1) + 1);
}

void ServingContext::publish(const Served& served) {
  if (served_.load(std::memory_order_acquire) != nullptr) {
    throw Error(ErrorCode::kFailedPrecondition, "the serving context was published already");
  }
  storage_ = served;
  served_.store(&storage_, std::memory_order_release);
}

grpc::Status to_status(const Error& error) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (error.code()) {
    case ErrorCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case ErrorCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case ErrorCode::kDataLoss: code = grpc::StatusCode::DATA_LOSS; break;
    case ErrorCode::kOutOfRange: code = grpc::StatusCode::OUT_OF_RANGE; break;
    case ErrorCode::kFailedPrecondition: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    case ErrorCode::kResourceExhausted: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case ErrorCode::kUnavailable: code = grpc::StatusCode::UNAVAILABLE; break;
    case ErrorCode::kInternal: code = grpc::StatusCode::INTERNAL; break;
  }
  return grpc::Status(code, error.what());
}

}  // namespace helios::serve
