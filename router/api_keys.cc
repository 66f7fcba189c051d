#include "router/api_keys.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace nextserve::router {
namespace {

// Compares without an early exit, so timing does not reveal how much of a guess was right.
bool SameSecret(absl::string_view a, absl::string_view b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= unsigned(a[i]) ^ unsigned(b[i % std::max<size_t>(b.size(), 1)]);
  return diff == 0;
}

absl::Status AddKey(std::vector<ApiKeys::Key>* keys, std::string secret, std::string label,
                    int limit) {
  if (secret.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": an API key needs at least 8 characters"));
  }
  for (const ApiKeys::Key& k : *keys) {
    if (k.secret == secret)
      return absl::InvalidArgumentError(absl::StrCat(label, ": the same key as ", k.label));
  }
  keys->push_back({.secret = std::move(secret), .label = std::move(label), .max_in_flight = limit});
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& file, const char* env) {
  auto out = std::make_unique<ApiKeys>();
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in)
      return absl::InvalidArgumentError(absl::StrCat("--api-keys-file ", file, ": cannot read"));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      absl::string_view text = absl::StripAsciiWhitespace(line);
      if (text.empty() || text.front() == '#') continue;
      std::vector<std::string> parts =
          absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      std::string label = absl::StrCat("key on line ", n, " of ", file);
      int limit = 0;
      for (size_t i = 1; i < parts.size(); ++i) {
        if (absl::StartsWith(parts[i], "label=")) {
          label = parts[i].substr(6);
        } else if (absl::StartsWith(parts[i], "max_in_flight=")) {
          if (!absl::SimpleAtoi(absl::string_view(parts[i]).substr(14), &limit) || limit < 0) {
            return absl::InvalidArgumentError(
                absl::StrCat(file, ":", n, ": max_in_flight must be a count >= 0"));
          }
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              file, ":", n, ": unknown field '", parts[i].substr(0, parts[i].find('=')),
              "' (expected label=NAME or max_in_flight=N)"));
        }
      }
      if (absl::Status s = AddKey(&out->keys_, parts[0], label, limit); !s.ok()) return s;
    }
  }
  if (const char* value = env != nullptr ? std::getenv(env) : nullptr; value != nullptr) {
    int n = 0;
    for (absl::string_view entry : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      ++n;
      entry = absl::StripAsciiWhitespace(entry);
      std::string secret(entry);
      int limit = 0;
      if (size_t colon = entry.rfind(':'); colon != absl::string_view::npos) {
        if (!absl::SimpleAtoi(entry.substr(colon + 1), &limit) || limit < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("$", env, ": entry ", n, ": the limit after ':' must be a count >= 0"));
        }
        secret = std::string(entry.substr(0, colon));
      }
      if (absl::Status s =
              AddKey(&out->keys_, secret, absl::StrCat("key ", n, " of $", env), limit);
          !s.ok())
        return s;
    }
  }
  return out;
}

absl::StatusOr<ApiKeys::Lease> ApiKeys::Admit(const grpc::ServerContext& context) {
  if (keys_.empty()) return Lease();
  std::string presented;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    std::string value(it->second.data(), it->second.size());
    absl::string_view v = absl::StripAsciiWhitespace(value);
    if (v.size() > 7 && absl::EqualsIgnoreCase(v.substr(0, 7), "bearer ")) {
      presented = std::string(absl::StripAsciiWhitespace(v.substr(7)));
    }
  } else if (auto key = metadata.find("x-api-key"); key != metadata.end()) {
    presented = std::string(key->second.data(), key->second.size());
  }
  if (presented.empty()) {
    return absl::UnauthenticatedError(
        "an API key is required (authorization: Bearer <key>, or x-api-key: <key>)");
  }
  Key* match = nullptr;
  for (Key& k : keys_) {
    if (SameSecret(presented, k.secret) && match == nullptr) match = &k;
  }
  if (match == nullptr) return absl::UnauthenticatedError("the API key is not valid");
  const int now = match->in_flight->fetch_add(1) + 1;
  if (match->max_in_flight > 0 && now > match->max_in_flight) {
    match->in_flight->fetch_sub(1);
    return absl::ResourceExhaustedError(absl::StrCat(match->label, " has ", match->max_in_flight,
                                                     " requests in flight, its limit"));
  }
  return Lease(match->in_flight.get());
}

}  // namespace nextserve::router
