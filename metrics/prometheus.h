// The Registry on prometheus-cpp, and its HTTP exposer (GET /metrics, text format).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "metrics/metrics.h"

namespace nextserve::metrics {

class PrometheusRegistry final : public Registry {
 public:
  PrometheusRegistry();
  ~PrometheusRegistry() override;

  Counter& GetCounter(const std::string& name, const std::string& help,
                      const Labels& labels) override;
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels) override;
  Histogram& GetHistogram(const std::string& name, const std::string& help, const Labels& labels,
                          const std::vector<double>& buckets) override;
  void OnCollect(std::function<void()> hook) override;

  // The exposition text a scrape returns (the collect hooks run first).
  std::string TextFormat() const;

 private:
  friend class PrometheusExporter;
  struct State;
  std::shared_ptr<State> state_;  // shared with the exposer, which holds it weakly
};

// Serves a registry on http://HOST:PORT/metrics until destroyed.
class PrometheusExporter {
 public:
  // `port` 0 picks a free one (see port()). Fails (UNAVAILABLE) when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<PrometheusExporter>> Start(const std::string& host,
                                                                   int port,
                                                                   PrometheusRegistry& registry);
  ~PrometheusExporter();
  int port() const { return port_; }

 private:
  struct Impl;
  explicit PrometheusExporter(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace nextserve::metrics
