#include "router/parse_errors.h"

#include <cstdio>
#include <mutex>
#include <string>

#include "absl/strings/match.h"
#include "google/protobuf/stubs/logging.h"

namespace nextserve::router {
namespace {

// What protobuf last complained about while parsing on this thread.
thread_local std::string last_parse_error;

void CaptureLog(google::protobuf::LogLevel level, const char* file, int line,
                const std::string& message) {
  if (absl::StrContains(message, "when parsing")) last_parse_error = message;
  std::fprintf(stderr, "[libprotobuf %s:%d] %s\n", file, line, message.c_str());
}

class ParseErrorInterceptor : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      // Our handlers always say what went wrong; an empty INTERNAL is the failed parse.
      if (status.error_code() == grpc::StatusCode::INTERNAL && status.error_message().empty()) {
        // The failed parse logged on this thread just before (its message names the field).
        std::string what = absl::StrContains(last_parse_error, "nextserve.v1.")
                               ? last_parse_error
                               : "the request is not a valid protobuf message";
        last_parse_error.clear();
        methods->ModifySendStatus(
            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cannot parse the request: " + what));
      }
    }
    methods->Proceed();
  }
};

class ParseErrorInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    return new ParseErrorInterceptor;
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeParseErrorInterceptorFactory() {
  static std::once_flag once;
  std::call_once(once, [] { google::protobuf::SetLogHandler(&CaptureLog); });
  return std::make_unique<ParseErrorInterceptorFactory>();
}

}  // namespace nextserve::router
