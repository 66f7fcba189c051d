// The metrics interface that library code records into: counters, gauges and histograms named by
// a metric name and a fixed label set. Engine, scheduler, rank service and router take a Registry
// (default: NoopRegistry()), so none of them depends on an exporter; prometheus.h implements it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace nextserve::metrics {

using Labels = std::map<std::string, std::string>;

class Counter {
 public:
  virtual ~Counter() = default;
  virtual void Add(double amount = 1) = 0;  // amount >= 0
};

class Gauge {
 public:
  virtual ~Gauge() = default;
  virtual void Set(double value) = 0;
};

class Histogram {
 public:
  virtual ~Histogram() = default;
  virtual void Observe(double value) = 0;
};

class Registry {
 public:
  virtual ~Registry() = default;
  // One series per (name, labels): asking twice returns the same one. References stay valid for
  // the registry's lifetime. Thread-safe; meant for set-up, not the hot path (it takes a lock).
  virtual Counter& GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) = 0;
  virtual Gauge& GetGauge(const std::string& name, const std::string& help,
                          const Labels& labels) = 0;
  // `buckets`: ascending upper bounds; +Inf is implied. A name keeps the buckets it was made with.
  virtual Histogram& GetHistogram(const std::string& name, const std::string& help,
                                  const Labels& labels, const std::vector<double>& buckets) = 0;
  // Runs before every scrape: for values that are cheaper to read when asked (queue depth, cache
  // usage) than to update on every change. Never run by the no-op registry.
  virtual void OnCollect(std::function<void()> hook) = 0;
};

// Records nothing and costs a virtual call; the default wherever no exporter is configured.
Registry& NoopRegistry();

}  // namespace nextserve::metrics
