// Requests that protobuf cannot parse (e.g. a proto3 string field holding invalid UTF-8) never
// reach our handlers: gRPC answers INTERNAL with an empty message. This turns that answer into
// INVALID_ARGUMENT naming the field, from what protobuf logged while parsing on the same thread.
#pragma once

#include <memory>

#include "grpcpp/support/server_interceptor.h"

namespace nextserve::router {

// Installs protobuf's log handler (once per process; the messages still go to stderr) and returns
// the interceptor factory to pass to ServerBuilder::experimental().SetInterceptorCreators.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeParseErrorInterceptorFactory();

}  // namespace nextserve::router
