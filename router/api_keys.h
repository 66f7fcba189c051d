// API keys for the public port: every call must carry one (`authorization: Bearer <key>` or
// `x-api-key: <key>`), else UNAUTHENTICATED; each key may carry a limit on the requests it has in
// flight (more: RESOURCE_EXHAUSTED). Keys come from a file and/or $NEXTSERVE_API_KEYS and are never
// logged or echoed: messages name a key by its label.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace nextserve::router {

class ApiKeys {
 public:
  struct Key {
    std::string secret;
    std::string label;      // "team-a", or "key 3 of FILE"
    int max_in_flight = 0;  // 0: no limit
    std::unique_ptr<std::atomic<int>> in_flight = std::make_unique<std::atomic<int>>(0);
  };

  // Holds one of a key's in-flight places; releases it when destroyed.
  class Lease {
   public:
    Lease() = default;
    explicit Lease(std::atomic<int>* count) : count_(count) {}
    Lease(Lease&& o) noexcept : count_(std::exchange(o.count_, nullptr)) {}
    Lease& operator=(Lease&& o) noexcept {
      if (this != &o) {
        Release();
        count_ = std::exchange(o.count_, nullptr);
      }
      return *this;
    }
    ~Lease() { Release(); }

   private:
    void Release() {
      if (count_ != nullptr) count_->fetch_sub(1);
      count_ = nullptr;
    }
    std::atomic<int>* count_ = nullptr;
  };

  // File lines: `KEY [label=NAME] [max_in_flight=N]`, `#` comments. Env: `KEY[:N],KEY[:N],...`.
  // Empty `file` and no env: no keys (then Enabled() is false and every call is admitted).
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& file, const char* env);

  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // The call's key, checked and counted. Admits everything when no keys are configured.
  absl::StatusOr<Lease> Admit(const grpc::ServerContext& context);

 private:
  std::vector<Key> keys_;
};

}  // namespace nextserve::router
