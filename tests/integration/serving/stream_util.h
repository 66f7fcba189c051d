// Helpers for reading Generate streams in the serving tests.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "sdk/cpp/client.h"

namespace nextserve::testing {

// Everything a Generate stream delivered, with the time each piece arrived.
struct Collected {
  std::vector<v1::Delta> deltas;
  std::vector<absl::Time> delta_times;
  std::optional<v1::Final> final;
  absl::Status status;
  absl::Time end;
  std::string text() const {
    std::string t;
    for (const auto& d : deltas) t += d.text();
    return t;
  }
  std::vector<int32_t> tokens() const {
    std::vector<int32_t> ids;
    for (const auto& d : deltas) ids.insert(ids.end(), d.token_ids().begin(), d.token_ids().end());
    return ids;
  }
};

// Reads `stream` to the end.
inline Collected Collect(sdk::GenerateStream& stream) {
  Collected c;
  v1::GenerateResponse r;
  while (stream.Next(&r)) {
    if (r.has_delta()) {
      c.deltas.push_back(r.delta());
      c.delta_times.push_back(absl::Now());
    } else if (r.has_final()) {
      c.final = r.final();
    }
  }
  c.status = stream.Finish();
  c.end = absl::Now();
  return c;
}

inline v1::GenerateRequest IdsRequest(const std::vector<int32_t>& ids, int max_tokens) {
  v1::GenerateRequest req;
  req.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  req.set_max_tokens(max_tokens);
  return req;
}

}  // namespace nextserve::testing
