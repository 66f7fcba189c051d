// Checks an error's code and that its message names what it should (file, tensor, field).
#pragma once

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace nextserve::testing {

inline ::testing::AssertionResult IsError(const absl::Status& s, absl::StatusCode code,
                                          std::initializer_list<std::string> needles) {
  if (s.ok()) return ::testing::AssertionFailure() << "expected an error, got OK";
  if (s.code() != code) {
    return ::testing::AssertionFailure()
           << "expected code " << absl::StatusCodeToString(code) << ", got " << s;
  }
  const std::string msg(s.message());
  for (const std::string& n : needles) {
    if (msg.find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks '" << n << "': " << s;
    }
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult IsError(const absl::StatusOr<T>& s, absl::StatusCode code,
                                   std::initializer_list<std::string> needles) {
  return IsError(s.status(), code, needles);
}

}  // namespace nextserve::testing
